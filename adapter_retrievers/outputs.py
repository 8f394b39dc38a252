"""The one rule for every path the package writes, checked before any reading, embedding or training.

- An existing file is never replaced or appended to unless the caller said so (``--overwrite`` on the
  command line, ``overwrite=True`` in Python), or it is the writer's own previous output that the writer
  documents it continues (``synth`` resumes its pairs file, ``refresh`` adds to its store, the demo
  reruns into its folder).
- An existing folder is replaced only with ``overwrite``, and only when it holds nothing but what the
  writer itself writes (an adapter folder: ``model.safetensors`` and ``adapter_config.json``).
- Two outputs of one call are never the same path, nor one inside the other (compared after resolving
  ``..``, ``~`` and symlinks).
- Nothing is written inside the installed package; the command line also refuses the repository's
  source folders (``tests/``, ``benchmarks/``, ``scripts/``, ``cookbook/``, ``docs/``, ``.git``).

Python functions call :func:`check_output`; CLI commands name all their outputs at once in
:func:`check_outputs` (``hint="--overwrite"``, ``protect_sources=True``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: folders of a clone that hold source, never outputs (besides the package itself)
SOURCE_FOLDERS = ("tests", "benchmarks", "scripts", "cookbook", "docs", ".git")


class OutputRefused(ValueError):
    """The write rule refused an output path; nothing was written."""


@dataclass(frozen=True)
class Output:
    """One path about to be written, as the caller named it.

    ``name``: how the user gave it (``"--output"``, ``"path"``); ``folder``: a folder the writer fills;
    ``continues``: tells the writer's own previous output (described by ``continues_what``), which it
    continues or reruns into without ``overwrite``; ``replaceable``: for a folder, whether ``overwrite``
    may replace it (it holds only what the writer writes).
    """

    path: os.PathLike | str
    name: str = "path"
    folder: bool = False
    continues: Callable[[Path], bool] | None = None
    continues_what: str = ""
    replaceable: Callable[[Path], bool] | None = None
    can_overwrite: bool = True  # False: the writer has no overwrite switch (a store is only ever added to)


def resolved(path: os.PathLike | str) -> Path:
    """``path`` made absolute with ``~``, ``..`` and symlinks resolved (it need not exist)."""
    return Path(path).expanduser().resolve()


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def package_folder() -> Path:
    return resolved(Path(__file__).parent)


def protected_folders(sources: bool) -> list[tuple[Path, str]]:
    """``(folder, what it is)`` for every folder no output may be written in."""
    package = package_folder()
    folders = [(package, "the installed adapter_retrievers package")]
    root = package.parent
    if sources and (root / "pyproject.toml").is_file() and (root / "adapter_retrievers").is_dir():
        folders += [(root / name, "the repository's source folders") for name in SOURCE_FOLDERS]
    return folders


def _writable_parent(path: Path, name: str) -> None:
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputRefused(f"{name} {path}: cannot write there ({parent} is not a writable folder)")


def _check_one(output: Output, overwrite: bool, hint: str, protect_sources: bool) -> Path:
    path = Path(output.path)
    where = resolved(path)
    name = output.name
    for folder, what in protected_folders(protect_sources):
        if _inside(where, folder):
            raise OutputRefused(
                f"{name} {path}: inside {what} ({folder}); write outputs elsewhere (the README's examples use runs/)"
            )
    own = f" and is not {output.continues_what}" if output.continues_what else ""
    if output.can_overwrite:
        refused = f"{name} {path}: exists{own}; pass {hint} to replace it"
    else:
        refused = f"{name} {path}: exists{own}; give a new {'folder' if output.folder else 'file'}"
    if output.folder and path.exists() and not path.is_dir():
        raise OutputRefused(f"{name} {path}: exists and is not a folder")
    if not output.folder and path.is_dir():
        raise OutputRefused(f"{name} {path}: is a folder; give a file name")
    continued = path.exists() and output.continues is not None and output.continues(path)
    if output.folder:
        if path.is_dir() and any(path.iterdir()) and not continued:
            if output.replaceable is not None and not output.replaceable(path):
                raise OutputRefused(
                    f"{name} {path}: is a folder with other files in it (they would be deleted); give a new folder"
                )
            if not (overwrite and output.can_overwrite):
                raise OutputRefused(refused)
    elif path.exists() and not continued and not (overwrite and output.can_overwrite):
        raise OutputRefused(refused)
    _writable_parent(where, name)
    return where


def check_outputs(
    outputs: Iterable[Output | None],
    overwrite: bool = False,
    hint: str = "overwrite=True",
    protect_sources: bool = False,
) -> None:
    """Refuse the first output the rule does not allow (:class:`OutputRefused`); ``None`` entries are skipped.

    ``hint``: what the caller passes to replace an existing file (``"--overwrite"`` on the command line).
    """
    seen: list[tuple[Path, Output]] = []
    for output in outputs:
        if output is None:
            continue
        where = _check_one(output, overwrite, hint, protect_sources)
        for other_where, other in seen:
            if where == other_where:
                raise OutputRefused(
                    f"{other.name} and {output.name} are the same path ({output.path}): one would overwrite the other"
                )
            for outer, inner, a, b in ((other_where, where, other, output), (where, other_where, output, other)):
                if _inside(inner, outer):
                    raise OutputRefused(f"{b.name} {b.path} is inside {a.name} {a.path}: give separate paths")
        seen.append((where, output))


def check_output(
    path: os.PathLike | str,
    overwrite: bool = False,
    *,
    name: str = "path",
    folder: bool = False,
    continues: Callable[[Path], bool] | None = None,
    continues_what: str = "",
    replaceable: Callable[[Path], bool] | None = None,
    can_overwrite: bool = True,
) -> Path:
    """Check one output of a Python function (see the module docstring); returns ``path`` as a :class:`Path`."""
    check_outputs([Output(path, name, folder, continues, continues_what, replaceable, can_overwrite)], overwrite)
    return Path(path)


def holds_only(names: Sequence[str]) -> Callable[[Path], bool]:
    """A test for a folder that holds nothing but entries called ``names`` (what one writer writes)."""
    allowed = set(names)

    def check(folder: Path) -> bool:
        return all(child.name in allowed for child in folder.iterdir())

    return check

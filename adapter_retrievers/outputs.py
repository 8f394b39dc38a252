"""The one rule for every path the package writes, checked before any reading, embedding or training.

- An existing file is never replaced or appended to unless the caller said so (``--overwrite`` on the
  command line, ``overwrite=True`` in Python), or it is the writer's own previous output that the writer
  documents it continues (``synth`` resumes its pairs file, ``refresh`` adds to its store, the demo
  reruns into its folder).
- An existing folder is replaced only with ``overwrite``, and only when it holds nothing but what the
  writer itself writes (an adapter folder: ``model.safetensors`` and ``adapter_config.json``).
- Two outputs of one call are never the same path, nor one inside the other (compared after resolving
  ``..``, ``~`` and symlinks).
- Nothing is written inside the installed package or the Python environment running it (``sys.prefix``,
  site-packages). Run from a clone, the command line also refuses, ``--overwrite`` or not, every file of the
  project's repository (what ``git ls-files`` lists there: ``README.md``, ``pyproject.toml``, ``Makefile``,
  ``.ci/run``, ...), any folder that holds such files (``tests/``, ``docs/``, ``.ci/``, ...), the clone's
  root folder itself, ``.git`` and the clone's ``.venv``.
- An output whose kind has a conventional suffix (``.png`` for a chart, ``.json``, ``.jsonl``) must have it:
  a chart named ``curve.txt`` would be a PNG in disguise.

Python functions call :func:`check_output`; CLI commands name all their outputs at once in
:func:`check_outputs` (``hint="--overwrite"``, ``protect_sources=True``).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: folders of a clone that hold source, never outputs (besides the package itself), even where git cannot say
SOURCE_FOLDERS = ("tests", "benchmarks", "scripts", "cookbook", "docs", ".ci", ".git", ".venv")
#: the clone's own files at its root, for when git cannot list them (no ``.git``, no git on PATH)
ROOT_FILES = ("README.md", "pyproject.toml", "Makefile", "constraints.txt", "LICENSE", ".gitignore")
#: what a file with this suffix holds, for the message refusing another suffix
SUFFIXES = {".png": "a PNG chart", ".json": "JSON", ".jsonl": "JSON lines"}


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
    suffix: str = ""  # the suffix the file must have (``".png"``: what is written is a PNG, whatever its name)


def resolved(path: os.PathLike | str) -> Path:
    """``path`` made absolute with ``~``, ``..`` and symlinks resolved (it need not exist)."""
    return Path(path).expanduser().resolve()


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def package_folder() -> Path:
    return resolved(Path(__file__).parent)


def environment_folders() -> list[Path]:
    """The Python environment running this: its prefix and its site-packages (a venv's ``.venv``, say)."""
    paths = {sys.prefix, sys.exec_prefix, *(sysconfig.get_paths().get(key) for key in ("purelib", "platlib"))}
    folders = {resolved(p) for p in paths if p}
    return sorted(f for f in folders if f != Path(f.anchor) and f != resolved("~"))  # never all of / or ~


def clone_root() -> Path | None:
    """The clone of this project the package runs from (``pip install -e .``, ``make``), or ``None``."""
    root = package_folder().parent
    return root if (root / "pyproject.toml").is_file() and (root / "adapter_retrievers").is_dir() else None


@functools.lru_cache(maxsize=4)
def tracked_files(root: Path) -> frozenset[Path]:
    """The files of the project's repository at ``root`` (``git ls-files``); its known files without git."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z"], capture_output=True, timeout=30, check=True
        ).stdout.decode("utf-8", "surrogateescape")
        files = frozenset(root / name for name in listed.split("\0") if name)
    except (OSError, subprocess.SubprocessError):  # no git, or not a git checkout (an unpacked sdist)
        files = frozenset()
    return files or frozenset(root / name for name in ROOT_FILES if (root / name).exists())


def _protected(where: Path, sources: bool) -> str | None:
    """What ``where`` belongs to when no output may be written there, else ``None``."""
    if _inside(where, package_folder()):
        return f"inside the installed adapter_retrievers package ({package_folder()})"
    for environment in environment_folders():
        if _inside(where, environment):
            return f"inside the Python environment running adapter-retrievers ({environment})"
    root = clone_root() if sources else None
    if root is None:
        return None
    files = tracked_files(root)
    if where in files:
        return "a file of the adapter-retrievers repository (git tracks it); it is never replaced"
    if where == root:
        return "the root folder of the adapter-retrievers clone (it holds the project's own files)"
    if root in where.parents:
        top = root / where.relative_to(root).parts[0]
        source = {root / f.relative_to(root).parts[0] for f in files if f.parent != root}
        if top.name in SOURCE_FOLDERS or top in source:
            return f"inside the repository's source folder {top.name}/ ({top})"
    return None


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
    what = _protected(where, protect_sources)
    if what is not None:
        raise OutputRefused(f"{name} {path}: {what}; write outputs elsewhere (the README's examples use runs/)")
    if output.suffix and not path.name.lower().endswith(output.suffix):
        holds = SUFFIXES.get(output.suffix, f"a {output.suffix} file")
        raise OutputRefused(f"{name} {path}: what is written there is {holds}; give a name ending in {output.suffix}")
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

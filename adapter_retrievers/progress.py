"""Progress for every step longer than a couple of seconds, readable wherever the output goes.

On a terminal or in a notebook :func:`progress_bar` is a tqdm bar. Where stderr is a file or a pipe
(``make demo > log``, cron) it is a few plain lines instead (one every ``PLAIN_EVERY`` seconds, the first
after ``PLAIN_EVERY`` seconds even when the first batch takes longer, and one at the end; none for a step
that fails, whose error says the rest): no escape codes, no screenfuls of redrawn bars. A bar opened while
another is open in the same thread shows nothing (the embedding inside a training step, say), so bars never
nest.
:func:`status` prints one line for a step without a count (loading a model).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Any

PLAIN_EVERY = 10.0  # seconds between two plain lines of one step
PLAIN_AFTER = 2.0  # a plain step shorter than this prints nothing

_open: dict[int, int] = {}  # thread id -> bars open in it
_open_lock = threading.Lock()


def interactive() -> bool:
    """True when progress can be drawn as a bar: stderr is a terminal, or this runs in a Jupyter kernel."""
    try:
        if sys.stderr.isatty():
            return True
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False
    shell = sys.modules.get("IPython")
    get_ipython = getattr(shell, "get_ipython", None)
    return get_ipython is not None and type(get_ipython()).__name__ == "ZMQInteractiveShell"


def status(message: str, enabled: bool = True) -> None:
    """One line on stderr (for a step that has no count to show)."""
    if enabled:
        print(message, file=sys.stderr, flush=True)


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values: Any) -> None:
        pass

    def close(self, failed: bool = False) -> None:
        pass

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Lines(_Silent):
    """A bar as plain lines: ``desc: 120/240 texts (50%), 10s`` every ``PLAIN_EVERY`` seconds (from a timer
    thread, so a slow first batch still shows the step is alive), and a last line when done."""

    def __init__(self, total: int | None, desc: str, unit: str) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.n = 0
        self.postfix = ""
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._printing = threading.Lock()  # no periodic line after the last one
        self._ticker = threading.Thread(target=self._tick, name=f"progress: {desc}", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(PLAIN_EVERY):
            with self._printing:
                if not self._stop.is_set():
                    print(self._line(False), file=sys.stderr, flush=True)

    def _line(self, final: bool) -> str:
        seconds = time.monotonic() - self.started
        count = f"{self.n}/{self.total}" if self.total else str(self.n)
        share = f" ({self.n / self.total:.0%})" if self.total and not final else ""
        extra = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {count} {self.unit}s{share}{extra}, {'done in ' if final else ''}{seconds:.0f}s"

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def close(self, failed: bool = False) -> None:
        with self._printing:
            if self._stop.is_set():
                return
            self._stop.set()
            if not failed and time.monotonic() - self.started >= PLAIN_AFTER:
                print(self._line(True), file=sys.stderr, flush=True)


class _Bar:
    """Marks the thread as having an open bar for as long as ``inner`` is open."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.closed = False
        self.thread = threading.get_ident()  # closed from another thread (a generator), it still counts here
        with _open_lock:
            _open[self.thread] = _open.get(self.thread, 0) + 1

    def update(self, n: int = 1) -> None:
        self.inner.update(n)

    def set_postfix(self, **values: Any) -> None:
        self.inner.set_postfix(**values)

    def close(self, failed: bool = False) -> None:
        if not self.closed:
            self.closed = True
            with _open_lock:
                _open[self.thread] -= 1
                if not _open[self.thread]:
                    del _open[self.thread]
            if isinstance(self.inner, _Silent):
                self.inner.close(failed)
            else:  # tqdm: its bar stays as drawn
                self.inner.close()

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(failed=exc_type is not None)  # a failed step prints no "done" line before its error

    def __del__(self) -> None:  # a bar dropped without close() must not silence the thread's later bars
        with contextlib.suppress(Exception):  # at interpreter exit, module globals may be gone already
            self.close()


def progress_bar(
    total: int | None, desc: str, unit: str = "it", enabled: bool = True, position: int = 0, leave: bool = True
) -> Any:
    """A progress bar (``update``, ``set_postfix``, ``close``; a context manager) for one step.

    A tqdm bar when :func:`interactive`, plain lines otherwise, nothing when ``enabled`` is false or a
    bar is already open in this thread.
    """
    if not enabled or _open.get(threading.get_ident()):
        return _Silent()
    if interactive():
        from tqdm.auto import tqdm

        return _Bar(tqdm(total=total, desc=desc, unit=unit, position=position, leave=leave))
    return _Bar(_Lines(total, desc, unit))

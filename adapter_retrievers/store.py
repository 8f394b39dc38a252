"""A versioned adapter store: every candidate kept with its evidence, one live pointer, a decision history.

Layout of a store folder::

    versions/v0001/        adapter files (model.safetensors, adapter_config.json) and version.json:
                           the evaluation that decided its fate and the fingerprints of the data it saw
    LIVE                   {"version": "v0003" | null, "since": ...}: null serves the base model
    CANDIDATE              {"version": "v0004" | null, "since": ...}: the candidate that serving interleaves
                           with live for a fraction of traffic (see adapter_retrievers.interleaving)
    history.jsonl          append-only: one JSON line per decision, promotion and rollback
    lock                   held by the one run in progress ({"pid", "host", "started", ...})
    state/                 what incremental sources and the pairs store remember between runs

Why this shape: serving processes only ever read ``LIVE`` (switched by an atomic rename) and whole
version folders (published by an atomic rename of a finished staging folder), so a reader never sees
a half-written version and a crash at any point leaves the previous live version serving. Retention
keeps the newest ``keep`` versions and never deletes the live one, the candidate, or the versions that
``rollback`` walks back to (the last ``keep`` of them).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from adapter_retrievers._files import append_line, atomic_write_text, fsync_folder
from adapter_retrievers.adapters import QueryAdapter

VERSIONS = "versions"
LIVE_FILE = "LIVE"
CANDIDATE_FILE = "CANDIDATE"
HISTORY_FILE = "history.jsonl"
LOCK_FILE = "lock"
VERSION_FILE = "version.json"
STATE_DIR = "state"
_VERSION_RE = re.compile(r"^v(\d+)$")
#: history actions that change which version is live
LIVE_ACTIONS = ("promoted", "promote", "rollback", "demoted")
#: history actions of a nightly run (what ``status`` shows as the last decision)
STATUS_ACTIONS = ("promoted", "kept", "demoted", "nothing_new", "failed", "quarantined")


class StoreError(RuntimeError):
    """The store cannot do what was asked (unknown version, nothing to roll back to, ...)."""


class StoreLocked(StoreError):
    """Another run holds the store's lock; ``holder`` says who (pid, host, start time, command)."""

    def __init__(self, message: str, holder: dict[str, Any]) -> None:
        super().__init__(message)
        self.holder = holder


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _version_number(name: str) -> int | None:
    match = _VERSION_RE.match(name)
    return int(match.group(1)) if match else None


# ------------------------------------------------------------------------------------------- lock


def _process_start(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (Linux): tells a reused pid from the original."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def _process_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat[stat.rindex(")") + 2 :].startswith("Z"):  # a zombie: killed, not yet reaped
            return False
    except OSError:
        pass
    return not (start is not None and _process_start(pid) not in (None, start))


class StoreLock:
    """An exclusive lock file (``O_CREAT | O_EXCL``) so two runs never overlap.

    A lock left by a killed run is stale and is cleared: its process is gone (same host; a reused pid
    is told apart by its start time) or it is older than ``stale_after`` seconds. Checking and clearing
    happen under a short ``flock`` so two runs cannot both clear the same stale lock and both proceed.
    """

    def __init__(self, path: os.PathLike | str, stale_after: float = 24 * 3600, command: str = "refresh") -> None:
        self.path = Path(path)
        self.stale_after = stale_after
        self.command = command
        self.token = uuid.uuid4().hex
        self.cleared: dict[str, Any] | None = None  # the stale lock this acquire cleared, if any

    def holder(self) -> dict[str, Any] | None:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            info = {}  # a lock cut short by a crash while being written
        return info if isinstance(info, dict) else {}

    def stale_reason(self, info: dict[str, Any]) -> str | None:
        """Why the lock described by ``info`` is stale, or None while its run may still be going."""
        pid, host = info.get("pid"), info.get("host")
        if isinstance(pid, int) and host == socket.gethostname() and not _process_alive(pid, info.get("pid_start")):
            return f"its process {pid} is gone"
        started = info.get("started_unix")
        if not isinstance(started, (int, float)):
            try:
                started = self.path.stat().st_mtime
            except FileNotFoundError:
                return "it was just removed"
        age = time.time() - float(started)
        if age > self.stale_after:
            return f"it is {age / 3600:.1f} h old (older than {self.stale_after / 3600:.1f} h)"
        return None

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no guard, O_EXCL alone
            yield
            return
        fd = os.open(self.path.with_name(self.path.name + ".guard"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def acquire(self) -> StoreLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        info = {
            "pid": os.getpid(),
            "pid_start": _process_start(os.getpid()),
            "host": socket.gethostname(),
            "started": now_iso(),
            "started_unix": time.time(),
            "command": self.command,
            "token": self.token,
        }
        with self._guard():
            for _ in range(2):
                try:
                    fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    holder = self.holder() or {}
                    reason = self.stale_reason(holder)
                    if reason is None:
                        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
                        raise StoreLocked(
                            f"another run holds {self.path}: {holder.get('command', '?')} started "
                            f"{holder.get('started', '?')} by {who}",
                            holder,
                        ) from None
                    self.cleared = {**holder, "reason": reason}
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()
                    continue
                try:
                    os.write(fd, json.dumps(info).encode("utf-8"))
                    os.fsync(fd)
                finally:
                    os.close(fd)
                return self
        raise StoreLocked(f"could not take {self.path}", self.holder() or {})  # pragma: no cover

    def release(self) -> None:
        """Remove the lock file if it is still ours."""
        with self._guard():
            holder = self.holder()
            if holder is not None and holder.get("token") == self.token:
                self.path.unlink()

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# ------------------------------------------------------------------------------------------ store


@dataclass
class VersionInfo:
    """One stored version: its id, when it was made, and what its ``version.json`` says."""

    version: str
    path: Path
    record: dict[str, Any]

    @property
    def created(self) -> str | None:
        return self.record.get("created")


class AdapterStore:
    """Versions, the live pointer, the decision history and the run lock of one store folder.

    ``keep``: how many versions retention keeps (the live version, the candidate and the last ``keep`` states
    that ``rollback`` returns to are always kept in addition).
    """

    def __init__(self, root: os.PathLike | str, keep: int = 10, stale_lock_after: float = 24 * 3600) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.root = Path(root)
        self.keep = keep
        self.stale_lock_after = stale_lock_after

    # ---------------------------------------------------------------------------------- paths

    @property
    def versions_dir(self) -> Path:
        return self.root / VERSIONS

    @property
    def live_path(self) -> Path:
        return self.root / LIVE_FILE

    @property
    def candidate_path(self) -> Path:
        return self.root / CANDIDATE_FILE

    @property
    def history_path(self) -> Path:
        return self.root / HISTORY_FILE

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    def version_path(self, version: str) -> Path:
        if _version_number(version) is None:
            raise StoreError(f"{version!r} is not a version id (they look like v0003)")
        return self.versions_dir / version

    # ------------------------------------------------------------------------------- versions

    def versions(self) -> list[str]:
        """Stored version ids, oldest first (staging folders of unfinished saves are not versions)."""
        if not self.versions_dir.is_dir():
            return []
        found = [
            p.name
            for p in self.versions_dir.iterdir()
            if _version_number(p.name) is not None and (p / VERSION_FILE).is_file()
        ]
        return sorted(found, key=lambda v: _version_number(v) or 0)

    def __contains__(self, version: object) -> bool:
        return isinstance(version, str) and version in self.versions()

    def info(self, version: str) -> VersionInfo:
        path = self.version_path(version)
        try:
            record = json.loads((path / VERSION_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            stored = ", ".join(self.versions()) or "none"
            raise StoreError(f"no version {version} in {self.root} (stored: {stored})") from None
        return VersionInfo(version, path, record)

    def load(self, version: str, base_model: str | None = None, dimension: int | None = None) -> QueryAdapter:
        """The adapter of ``version``, checked against ``base_model``/``dimension`` when given."""
        self.info(version)
        return QueryAdapter.load(self.version_path(version), base_model=base_model, dimension=dimension)

    def _next_number(self) -> int:
        numbers = [_version_number(v) or 0 for v in self.versions()]
        numbers += [_version_number(str(r.get("version"))) or 0 for r in self.history()]
        if self.versions_dir.is_dir():  # unfinished saves still reserve their number
            numbers += [_version_number(p.name.split(".")[1]) or 0 for p in self.versions_dir.glob(".v*.staging")]
        return max(numbers, default=0) + 1

    def add_version(self, adapter: QueryAdapter, record: dict[str, Any]) -> str:
        """Store ``adapter`` with ``record`` (evaluation, data fingerprints, decision) as a new version.

        The folder is written under a hidden staging name, flushed, and renamed into place in one step:
        a run killed mid-save leaves only a staging folder, which the next run removes.
        """
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        version = f"v{self._next_number():04d}"
        staging = self.versions_dir / f".{version}.{uuid.uuid4().hex[:8]}.staging"
        stored = replace(adapter, metadata={**adapter.metadata, "store_version": version})
        try:
            stored.save(staging)
            full = {"version": version, "created": now_iso(), **record}
            (staging / VERSION_FILE).write_text(json.dumps(full, indent=2, default=str) + "\n", encoding="utf-8")
            fsync_folder(staging)
            os.rename(staging, self.versions_dir / version)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return version

    def remove_staging(self) -> list[str]:
        """Delete what unfinished saves left behind (call under the lock)."""
        removed = []
        if self.versions_dir.is_dir():
            for path in self.versions_dir.glob(".*"):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
        return removed

    def prune(self) -> list[str]:
        """Delete all but the newest ``keep`` versions; the live and candidate versions are never deleted, nor
        the last ``keep`` versions that rollbacks return to (so that ``rollback`` after months of nightly
        candidates still finds what was live before)."""
        kept = {self.live, self.candidate, *self._earlier_states()[-self.keep :]}
        versions = self.versions()
        doomed = [v for v in versions[: max(0, len(versions) - self.keep)] if v not in kept]
        for version in doomed:
            trash = self.versions_dir / f".{version}.deleting"
            os.rename(self.versions_dir / version, trash)  # gone from versions() in one step
            shutil.rmtree(trash, ignore_errors=True)
        return doomed

    # ------------------------------------------------------------------------------------- live

    @staticmethod
    def _read_pointer(path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"version": None, "since": None}
        return data if isinstance(data, dict) else {"version": None, "since": None}

    def pointer(self) -> dict[str, Any]:
        """The live pointer's content: ``{"version": id or None, "since": ...}``."""
        return self._read_pointer(self.live_path)

    @property
    def candidate(self) -> str | None:
        """The version serving interleaves with live for a fraction of traffic (None: no comparison runs)."""
        return self._read_pointer(self.candidate_path).get("version")

    def candidate_adapter(self, base_model: str, dimension: int) -> QueryAdapter | None:
        version = self.candidate
        return None if version is None else self.load(version, base_model, dimension)

    def set_candidate(self, version: str | None) -> None:
        """Point the online comparison at ``version`` (None: stop it); the refresh records why in its decision.

        Retention never deletes the candidate, so a serving process can always load it.
        """
        if version is not None:
            self.info(version)
        if version == self.candidate:
            return
        atomic_write_text(self.candidate_path, json.dumps({"version": version, "since": now_iso()}) + "\n")

    @property
    def live(self) -> str | None:
        """The live version id; None means the base model (no adapter) is served."""
        return self.pointer().get("version")

    def live_adapter(self, base_model: str, dimension: int) -> QueryAdapter:
        """The live adapter, or the identity when no version is live."""
        version = self.live
        if version is None:
            return QueryAdapter.identity(dimension, base_model)
        return self.load(version, base_model, dimension)

    def _switch(self, version: str | None, action: str, **details: Any) -> dict[str, Any]:
        if version is not None:
            self.info(version)  # refuse unknown versions before touching the pointer
        before = self.live
        atomic_write_text(self.live_path, json.dumps({"version": version, "since": now_iso()}) + "\n")
        record = {"action": action, "version": version, "live_before": before, "live_after": version, **details}
        self.append_history(record)
        return record

    def set_live(self, version: str | None, action: str = "promote", **details: Any) -> dict[str, Any]:
        """Point serving at ``version`` (None: the base model) and record why in the history."""
        return self._switch(version, action, **details)

    def promote(self, version: str, reason: str = "promoted by an operator") -> dict[str, Any]:
        """Make a stored version live by hand (e.g. a candidate a refresh kept back)."""
        return self._switch(version, "promote", reason=reason)

    def rollback(self, version: str | None = None) -> dict[str, Any]:
        """Serve ``version``, or by default what was live before the last change of live.

        The last change may be a promotion, a demotion (the base model served because live stopped earning
        its place: rollback brings that adapter back) or an operator's switch. Repeated rollbacks walk further
        back through the states live was in, ending where the store began (the base model).
        """
        if version is not None:
            return self._switch(version, "rollback", reason="rolled back by an operator", undo=False)
        earlier = self._earlier_states()
        if not earlier:
            raise StoreError(
                "the base model is live already: nothing to roll back to"
                if self.live is None
                else "no earlier state of live is recorded: name the version to serve"
            )
        target = earlier[-1]
        if target is not None and target not in self.versions():
            raise StoreError(f"{target}, live before the last change, is no longer stored: name the version to serve")
        return self._switch(target, "rollback", reason="rolled back by an operator", undo=True)

    def _earlier_states(self) -> list[str | None]:
        """The states live was in before each change still in effect, oldest first: every change pushes the
        state it left, every plain rollback takes one back."""
        stack: list[str | None] = []
        for record in self.history():
            if record.get("action") not in LIVE_ACTIONS:
                continue
            if record.get("action") == "rollback" and record.get("undo", True):
                if stack:
                    stack.pop()
            else:
                stack.append(record.get("live_before"))
        return stack

    # ---------------------------------------------------------------------------------- history

    def append_history(self, record: dict[str, Any]) -> dict[str, Any]:
        full = {"time": now_iso(), **record}
        self.root.mkdir(parents=True, exist_ok=True)
        append_line(self.history_path, json.dumps(full, default=str))
        return full

    def history(self) -> list[dict[str, Any]]:
        """Every recorded decision, oldest first (a line cut by a crash is skipped)."""
        try:
            text = self.history_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        records = []
        for line in text.splitlines():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                records.append(obj)
        return records

    # ------------------------------------------------------------------------------- lock/status

    def lock(self, command: str = "refresh") -> StoreLock:
        """The run lock (a context manager); raises :class:`StoreLocked` while another run holds it."""
        return StoreLock(self.root / LOCK_FILE, self.stale_lock_after, command)

    def status(self) -> dict[str, Any]:
        """What an operator wants to see first: live version and its numbers, versions, last decisions."""
        pointer = self.pointer()
        live = pointer.get("version")
        history = self.history()
        decisions = [r for r in history if r.get("action") in STATUS_ACTIONS]
        holder = self.lock().holder()
        live_record = self.info(live).record if live is not None and live in self.versions() else {}
        last = decisions[-1] if decisions else None
        return {
            "store": str(self.root),
            "live": live,
            "live_since": pointer.get("since"),
            "live_evaluation": live_record.get("evaluation"),
            "candidate": self.candidate,
            "versions": self.versions(),
            "last_decision": last,
            "decisions": len(decisions),
            "comparison": next((r["comparison"] for r in reversed(decisions) if r.get("comparison")), None),
            "quarantined": quarantined(history),
            "lock": holder,
        }


def quarantined(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The nights kept apart (history action ``quarantined``) that no operator has released yet."""
    released = {r.get("night") for r in history if r.get("action") == "released"}
    return [r for r in history if r.get("action") == "quarantined" and r.get("night") not in released]

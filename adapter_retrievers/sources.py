"""Incremental trace sources with watermarks, and the pairs store that accumulates what they yield.

A nightly run must read only the traffic that is new since the last run. Each source remembers how
far it has read in a *watermark* (a small JSON object); :meth:`Source.read` writes the new records,
in our log schema (see :mod:`adapter_retrievers.capture`), and returns the watermark it *would*
move to. The caller commits that watermark only after it has committed what it read, so a run that
fails or is killed reads the same records again next time (pairs are deduplicated, so nothing is
counted twice).

Sources:

- :class:`LogSource`: our JSONL log, appended to while we read. A partial last line is left for the
  next run; rotated files (``rag-log.jsonl.1``, ``rag-log.jsonl.2.gz``, ``rag-log.jsonl-20261127.gz``,
  renamed or copy-truncated, gzipped or not) are followed: a file is recognised by its first line.
- :class:`ExportSource`: exported trace files of any format :func:`~adapter_retrievers.harvest.read_traces`
  reads (OpenInference/Phoenix, LangSmith, Langfuse, LlamaIndex, ours); each file is read once, new
  files in a folder are picked up.
- :class:`PhoenixSource`: a live Arize Phoenix server, one project: retriever spans and their span,
  trace and document annotations since the watermark, paged (through
  :func:`~adapter_retrievers.harvest.phoenix.iter_phoenix_records`).

:class:`PairsStore` keeps the harvested (query, document) pairs, deduplicated, with the time each
query was first seen, so training can use the last N days only (to follow drift).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

from adapter_retrievers._files import atomic_write_text
from adapter_retrievers.data import ReadReport, TrainingSet

Write = Callable[[dict], None]


class SourceError(RuntimeError):
    """A trace source is unavailable or answered with an error: nothing was read, nothing moves."""


class Source(Protocol):
    """What the refresh loop needs from a source of traffic."""

    name: str  # key of this source's watermark; stable across runs

    def read(self, watermark: dict[str, Any] | None, write: Write, report: ReadReport) -> dict[str, Any]:
        """Write every record newer than ``watermark`` (our log schema) and return the new watermark.

        Raise :class:`SourceError` when the source cannot be read; bad records are counted in ``report``.
        """
        ...


class Watermarks:
    """How far each source has read, kept in one JSON file written atomically."""

    def __init__(self, path: os.PathLike | str) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, name: str) -> dict[str, Any] | None:
        return self.load().get(name)

    def commit(self, updates: dict[str, dict[str, Any]]) -> None:
        """Move the given sources' watermarks (call only after what they read is committed)."""
        data = self.load()
        data.update(updates)
        atomic_write_text(self.path, json.dumps(data, indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------- record helpers


def iso_time(value: Any) -> str | None:
    """A timestamp as ISO 8601 UTC: ISO strings pass through, epoch numbers (s, ms, µs, ns) are converted.

    Sources disagree (OTLP gives nanoseconds, LangSmith ISO strings); the time split needs one order.
    """
    if value is None or isinstance(value, bool):
        return None
    number: float | None = None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            number = float(text)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                return text
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            return parsed.astimezone(timezone.utc).isoformat(timespec="milliseconds")
    else:
        return None
    for scale in (1e9, 1e6, 1e3, 1.0):  # ns, µs, ms, s since the epoch
        if number >= scale * 1e8:
            number /= scale
            break
    return datetime.fromtimestamp(number, timezone.utc).isoformat(timespec="milliseconds")


def log_record(item: Any) -> dict[str, Any]:
    """A harvested :class:`LoggedRetrieval` or :class:`Signal` as a record of our log schema."""
    from adapter_retrievers.harvest import LoggedRetrieval

    if isinstance(item, LoggedRetrieval):
        record = {
            "type": "retrieval",
            "id": item.retrieval_id,
            "trace_id": item.trace_id,
            "timestamp": iso_time(item.timestamp),
            "query": item.query,
            "session": item.session,
            "documents": [_document_record(d) for d in item.documents],
        }
        if item.adapter_version is not None:
            record["adapter_version"] = item.adapter_version
        if item.candidate_version is not None:
            record["interleaving"] = {"candidate": item.candidate_version}
        return record
    return {
        "type": "signal",
        "target": item.target,
        "kind": item.kind,
        "value": item.value,
        "document_id": item.document_id,
        "document_position": item.document_position,
    }


def _document_record(doc: Any) -> dict[str, Any]:
    record = {"id": doc.id, "content": doc.content, "score": doc.score, "position": doc.position}
    record["metadata"] = doc.metadata
    if doc.ranker is not None:
        record["ranker"] = doc.ranker
    if doc.propensity is not None:
        record["propensity"] = doc.propensity
    return record


# ------------------------------------------------------------------------------------ our log


def _open_binary(path: Path) -> Any:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _first_line_id(path: Path) -> str | None:
    """A file's identity: the hash of its first complete line (survives rename, gzip and copy)."""
    try:
        with _open_binary(path) as handle:
            line = handle.readline(1 << 20)
    except (OSError, EOFError):
        return None
    if not line.endswith(b"\n"):
        return None  # empty, or the first line is still being written
    return hashlib.sha256(line).hexdigest()[:24]


@dataclass
class LogSource:
    """Our JSONL retrieval log at ``path`` and its rotated siblings, read incrementally.

    Watermark: ``{"file": identity of the last file read, "offset": bytes read in it, "name": ...}``.
    """

    path: Path
    name: str = ""

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.name = self.name or f"log:{self.path.name}"

    def files(self) -> list[Path]:
        """The rotated files, oldest first, then the live file."""
        folder, base = self.path.parent, self.path.name
        if not folder.is_dir():
            raise SourceError(f"log folder {folder} does not exist")
        rotated = [
            p
            for p in folder.iterdir()
            if p.is_file() and p.name != base and p.name.startswith((base + ".", base + "-"))
        ]
        rotated.sort(key=lambda p: (p.stat().st_mtime_ns, p.name))
        return [*rotated, self.path] if self.path.exists() else rotated

    def read(self, watermark: dict[str, Any] | None, write: Write, report: ReadReport) -> dict[str, Any]:
        try:
            files = [(p, _first_line_id(p)) for p in self.files()]
        except OSError as exc:
            raise SourceError(f"cannot list the log {self.path}: {exc}") from exc
        if not files:
            raise SourceError(f"no log at {self.path} (nor rotated copies of it)")
        start, offset = 0, 0
        if watermark and watermark.get("file"):
            found = [i for i, (_, ident) in enumerate(files) if ident == watermark["file"]]
            if found:
                start, offset = found[-1], int(watermark.get("offset", 0))
            else:
                report.skip("the file read last time is gone: reading every file present", str(watermark.get("name")))
        new = dict(watermark or {})
        for i in range(start, len(files)):
            path, ident = files[i]
            growing = path == self.path  # the live file: a partial last line is still being written
            end = self._read_file(path, offset if i == start else 0, growing, write, report)
            if ident is not None:
                new = {"file": ident, "offset": end, "name": path.name}
        return new

    @staticmethod
    def _read_file(path: Path, offset: int, growing: bool, write: Write, report: ReadReport) -> int:
        """Write the complete lines of ``path`` after byte ``offset``; return the offset after the last one."""
        try:
            handle = _open_binary(path)
        except OSError as exc:
            raise SourceError(f"cannot open {path}: {exc}") from exc
        position = offset
        with handle:
            try:
                if path.suffix != ".gz" and os.fstat(handle.fileno()).st_size < offset:
                    report.skip("log file shrank since the last run: read again from its start", str(path))
                    offset = 0
                handle.seek(offset)
                position = offset
                for line in handle:
                    if not line.endswith(b"\n"):
                        if not growing:  # a rotated file ends mid-line: the writer died mid-write
                            report.rows_read += 1
                            report.skip("line cut short (no newline at the end of a rotated file)", str(path))
                            position += len(line)
                        break  # in the live file: the writer is still writing it; next run reads it
                    position += len(line)
                    if not line.strip():
                        continue
                    report.rows_read += 1
                    where = f"{path.name}@{position - len(line)}"
                    try:
                        obj = json.loads(line)
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        report.skip("malformed JSON line", where)
                        continue
                    if not isinstance(obj, dict):
                        report.skip("line is not a JSON object", where)
                        continue
                    write(obj)
            except (OSError, EOFError) as exc:
                if path.suffix == ".gz":  # a truncated gzip: keep what was read, count the rest
                    report.skip(f"unreadable data ({type(exc).__name__})", str(path))
                    return position
                raise SourceError(f"cannot read {path}: {exc}") from exc
        return position


# ---------------------------------------------------------------------------------- exports


@dataclass
class ExportSource:
    """Exported trace files in ``fmt`` (files, or folders scanned for new files); each file is read once.

    Watermark: ``{"done": {content hash: file name}}``: a file is new when its content is new, so a
    re-export under another name is not read twice and a file rewritten in place is read again.
    """

    paths: list[Path]
    fmt: str = "openinference"
    policy: Any = None
    name: str = ""
    pattern: str = "*"

    def __post_init__(self) -> None:
        self.paths = [Path(p) for p in self.paths]
        self.name = self.name or f"export:{self.fmt}:" + ",".join(p.name for p in self.paths)

    def files(self) -> list[Path]:
        found: list[Path] = []
        for path in self.paths:
            if path.is_dir():
                found += sorted(p for p in path.glob(self.pattern) if p.is_file() and not p.name.startswith("."))
            elif path.is_file():
                found.append(path)
            else:
                raise SourceError(f"trace export {path} does not exist")
        return found

    def read(self, watermark: dict[str, Any] | None, write: Write, report: ReadReport) -> dict[str, Any]:
        from adapter_retrievers.harvest import read_traces

        done = dict((watermark or {}).get("done", {}))
        for path in self.files():
            try:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()[:24]
            except OSError as exc:
                raise SourceError(f"cannot read {path}: {exc}") from exc
            if digest in done:
                continue
            for item in read_traces([path], self.fmt, report, self.policy):
                write(log_record(item))
            done[digest] = path.name
        return {"done": done}


@dataclass
class PhoenixSource:
    """Retriever spans and the annotations on them from a live Phoenix server, for one project.

    Watermark: ``{"newest": start time of the newest span read}``. Each run reads spans started since
    the watermark minus ``feedback_hours``, so feedback given after a run on spans it already read is
    still picked up; what is read twice is deduplicated downstream. A server that is down or answers
    with an error raises :class:`SourceError` (the run stops; nothing moves).
    """

    url: str | None = None
    project: str = "default"
    feedback_hours: float = 24.0
    page_size: int = 500
    policy: Any = None
    api_key: str | None = None
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or f"phoenix:{self.project}"

    def read(self, watermark: dict[str, Any] | None, write: Write, report: ReadReport) -> dict[str, Any]:
        from adapter_retrievers.harvest import READERS, SignalPolicy
        from adapter_retrievers.harvest.phoenix import PhoenixExport, iter_phoenix_records

        newest = (watermark or {}).get("newest")
        since = datetime.fromisoformat(newest) - timedelta(hours=self.feedback_hours) if newest else None
        stats = PhoenixExport()
        where = f"phoenix:{self.project}"

        def records() -> Iterator[tuple[str, dict]]:
            for record in iter_phoenix_records(
                self.url, self.project, since=since, page_size=self.page_size, api_key=self.api_key, stats=stats
            ):
                report.rows_read += 1
                yield where, record

        try:
            for item in READERS["openinference"](records(), report, self.policy or SignalPolicy()):
                write(log_record(item))
        except (ConnectionError, RuntimeError) as exc:  # down, refused, or an error status / GraphQL error
            raise SourceError(f"Phoenix project {self.project!r}: {exc}") from exc
        latest = stats.watermark.isoformat() if stats.watermark else newest
        if newest and latest and latest < newest:
            latest = newest
        return {"newest": latest}


# ---------------------------------------------------------------------------------- pairs store


def _parse_time(text: str | None) -> datetime | None:
    iso = iso_time(text)
    if iso is None:
        return None
    try:
        return datetime.fromisoformat(iso)
    except ValueError:
        return None


@dataclass
class PairsStore:
    """Deduplicated (query, document) pairs with the time each query was first seen.

    One JSONL file: ``{"query_id", "query", "doc_id", "score" | "label": 0, "timestamp",
    "adapter_version", "propensity", "added"}``; rewritten atomically when pairs are added. ``added`` is when
    the pair entered the store (real time): an adapter stored before it cannot have trained on it, so the
    nightly refresh may score that adapter on its query. ``propensity``: the probability that the named
    document was shown (interleaved traffic), for inverse-propensity weights.
    """

    path: Path
    rows: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.rows = {}
        report = ReadReport()
        if self.path.exists():
            with open(self.path, encoding="utf-8") as handle:
                for line in handle:
                    with contextlib.suppress(json.JSONDecodeError):
                        row = json.loads(line)
                        if isinstance(row, dict) and "query_id" in row and "doc_id" in row:
                            self.rows[(row["query_id"], row["doc_id"])] = row
                            continue
                    report.skip("bad pairs-store line", str(self.path))
        self.read_report = report

    def __len__(self) -> int:
        return len(self.rows)

    def add(
        self,
        training_set: TrainingSet,
        query_info: dict[str, dict[str, Any]],
        exclude: Container[tuple[str, str]] = (),
        added: str | None = None,
    ) -> int:
        """Merge harvested pairs in (earliest timestamp and highest grade win); returns how many are new.

        ``exclude``: (query id, document id) keys kept elsewhere (a quarantined night's), not added here.
        ``added``: the time new pairs are stamped with (default: now).
        """
        count = 0
        added = added or datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        for query_id in training_set.query_ids:
            info = query_info.get(query_id, {})
            stamp = iso_time(info.get("timestamp"))
            judged = [(d, {"score": g}) for d, g in training_set.relevant[query_id].items()]
            judged += [(d, {"label": 0}) for d in sorted(training_set.negatives.get(query_id, ()))]
            for doc_id, grade in judged:
                if (query_id, doc_id) in exclude:
                    continue
                row = {"query_id": query_id, "query": training_set.queries[query_id], "doc_id": doc_id, **grade}
                row["timestamp"] = stamp
                for name in ("adapter_version", "propensity"):
                    if info.get(name) is not None:
                        row[name] = info[name]
                row["added"] = added
                old = self.rows.get((query_id, doc_id))
                if old is None:
                    self.rows[(query_id, doc_id)] = row
                    count += 1
                    continue
                if stamp and (not old.get("timestamp") or stamp < old["timestamp"]):
                    old["timestamp"] = stamp
                if "score" in row and ("label" in old or row["score"] > old.get("score", 0)):
                    old.pop("label", None)
                    old["score"] = row["score"]
        return count

    def merge(self, other: PairsStore) -> int:
        """Add the rows of ``other`` (an operator released a quarantined night) that are not here yet."""
        count = 0
        for key, row in other.rows.items():
            if key not in self.rows:
                self.rows[key] = row
                count += 1
        return count

    def save(self) -> None:
        lines = sorted(self.rows.values(), key=lambda r: (r.get("timestamp") or "", r["query_id"], r["doc_id"]))
        atomic_write_text(self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines))

    def select(self, window_days: float | None = None, now: datetime | None = None) -> Iterator[dict[str, Any]]:
        """Rows whose query was first seen in the last ``window_days`` (all rows when None)."""
        cutoff = None
        if window_days is not None:
            cutoff = (now or datetime.now(timezone.utc)) - timedelta(days=window_days)
        for row in self.rows.values():
            when = _parse_time(row.get("timestamp"))
            if cutoff is None or (when is not None and when >= cutoff):
                yield row

    def training_data(
        self, window_days: float | None = None, now: datetime | None = None, name: str = "pairs store"
    ) -> tuple[TrainingSet, dict[str, dict[str, Any]]]:
        """The selected pairs as a :class:`TrainingSet` plus per query: first-seen time, serving version, when
        its first pair entered the store (``added``) and its propensity."""
        queries: dict[str, str] = {}
        relevant: dict[str, dict[str, float]] = {}
        negatives: dict[str, set[str]] = {}
        info: dict[str, dict[str, Any]] = {}
        for row in self.select(window_days, now):
            qid = row["query_id"]
            queries[qid] = row["query"]
            if "label" in row:
                negatives.setdefault(qid, set()).add(row["doc_id"])
            else:
                relevant.setdefault(qid, {})[row["doc_id"]] = float(row.get("score", 1.0))
            seen = info.setdefault(
                qid, {"timestamp": row.get("timestamp"), "adapter_version": None, "added": None, "propensity": None}
            )
            if row.get("timestamp") and (not seen["timestamp"] or row["timestamp"] < seen["timestamp"]):
                seen["timestamp"] = row["timestamp"]
            seen["adapter_version"] = seen["adapter_version"] or row.get("adapter_version")
            if "label" not in row and row.get("propensity") is not None:
                seen["propensity"] = min(seen["propensity"] or 1.0, float(row["propensity"]))
            stamp = row.get("added") or ""  # pairs stored before the field existed: the oldest
            seen["added"] = stamp if seen["added"] is None else min(seen["added"], stamp)
        return TrainingSet(queries, relevant, negatives, name), info

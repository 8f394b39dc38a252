"""The two record types every reader produces, the value coercions they share, and the streaming line reader.

A reader turns one upstream format into :class:`LoggedRetrieval` (a query and the documents it got)
and :class:`Signal` (an outcome attached later: feedback, a citation, a click, a relevance label).
Everything after that (matching documents to the corpus, the signal policy, the report) is shared.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

from adapter_retrievers.data import ReadReport, _finite, _json, _open_binary, _RowErrors, iter_lines
from adapter_retrievers.interleaving import PROPENSITY_KEY, RANKER_KEY

MAX_LINE_BYTES = 16 * 1024 * 1024
POSITIVE_WORDS = frozenset({"relevant", "yes", "true", "thumbs_up", "up", "correct", "good"})
NEGATIVE_WORDS = frozenset(
    {"irrelevant", "not relevant", "unrelated", "no", "false", "thumbs_down", "down", "incorrect", "bad"}
)


@dataclass
class LoggedDocument:
    """One shown document. ``ranker``/``propensity``: on an interleaved retrieval, the ranker whose pick it
    was (``"live"``, ``"candidate"`` or ``"shared"``) and the probability it was shown at all; read from the
    fields of our log or, where a trace keeps only metadata (OpenInference spans, LlamaIndex nodes), from the
    ``adapter_ranker``/``adapter_propensity`` metadata the wrappers add."""

    id: str | None
    content: str | None
    score: float | None
    position: int
    metadata: dict = field(default_factory=dict)
    ranker: str | None = None
    propensity: float | None = None

    def __post_init__(self) -> None:
        if self.ranker is None:
            self.ranker = as_str(self.metadata.get(RANKER_KEY))
        if self.propensity is None:
            self.propensity = as_float(self.metadata.get(PROPENSITY_KEY))
        if self.propensity is not None and not 0.0 < self.propensity <= 1.0:
            self.propensity = None  # not a probability: unknown, never a weight


@dataclass
class LoggedRetrieval:
    retrieval_id: str
    query: str
    documents: list[LoggedDocument]
    trace_id: str | None = None
    timestamp: str | None = None
    session: str | None = None
    adapter_version: str | None = None  # the adapter-store version that served it ("base": none), if logged
    candidate_version: str | None = None  # interleaved: the candidate version live was compared with


@dataclass
class Signal:
    """An outcome for a retrieval (``target`` = retrieval id or trace id)."""

    target: str
    kind: str  # feedback | citation | click | label
    value: float | None
    document_id: str | None = None
    document_position: int | None = None


Parsed = Iterator["LoggedRetrieval | Signal"]
Records = Iterable[tuple[str, dict]]


def as_str(value: Any) -> str | None:
    """A non-empty id or text from a scalar; ``None`` for containers, booleans and blanks."""
    if value is None or isinstance(value, (dict, list, bool)):
        return None
    text = str(value).strip()
    return text or None


def as_float(value: Any) -> float | None:
    """A finite number from a number, a numeric string, or a label word (``thumbs_up`` -> 1, ``irrelevant`` -> 0).

    ``None`` for anything else, NaN, infinities and numbers beyond float range: an unusable value is skipped
    and counted by the reader, never read as a negative signal.
    """
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in POSITIVE_WORDS:
            return 1.0
        if lowered in NEGATIVE_WORDS:
            return 0.0
        try:
            value = float(lowered)
        except ValueError:
            return None
    if isinstance(value, bool):
        return float(value)
    return _finite(value)


def json_maybe(value: Any) -> Any:
    """Parse a JSON-encoded object or list held in a string attribute; anything else as it is."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def logged_document(d: Any, position: int) -> LoggedDocument | None:
    """One logged document from a dict (ours, LangChain ``Document``, Langfuse) or a bare string."""
    if isinstance(d, str):
        return LoggedDocument(None, d, None, position)
    if not isinstance(d, dict):
        return None
    meta = d.get("metadata") if isinstance(d.get("metadata"), dict) else {}
    content = next((d[k] for k in ("content", "page_content", "text") if isinstance(d.get(k), str)), None)
    score = as_float(d.get("score"))
    if score is None:
        score = as_float(meta.get("score"))
    pos = d.get("position") if isinstance(d.get("position"), int) else position
    return LoggedDocument(
        as_str(d.get("id")), content, score, pos, meta, as_str(d.get("ranker")), as_float(d.get("propensity"))
    )


def logged_documents(items: list) -> list[LoggedDocument]:
    return [doc for doc in (logged_document(d, i) for i, d in enumerate(items)) if doc is not None]


def _json_array(path: Path, opener: Callable[[Path], Any]) -> list | None:
    """The items of a file holding one JSON array (LangSmith / Langfuse API dumps); ``None`` for JSONL."""
    try:
        with opener(path) as handle:
            if handle.read(1) != b"[":
                return None
            data = _json((b"[" + handle.read()).decode("utf-8"))
    except (EOFError, OSError, zlib.error, UnicodeDecodeError, json.JSONDecodeError):
        return None  # read it line by line: each bad line is then counted where it is
    return data if isinstance(data, list) else None


# ------------------------------------------------------------------------------------- trace files

#: what a folder's trace files end with (anything else in it is counted as skipped)
TRACE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".jsonl.gz", ".ndjson.gz", ".json.gz", ".parquet")


@dataclass
class TraceFiles:
    """The trace files to read, in the order they are read, and the pyarrow filesystem they are on
    (``None``: the local disk through Python's own file functions)."""

    paths: list[str]
    filesystem: Any = None
    ignored: list[str] = field(default_factory=list)  # files in a folder that are not trace files

    def opener(self) -> Callable[[Path], Any]:
        """Open one of the files for binary reads, gunzipping ``.gz``."""
        if self.filesystem is None:
            return _open_binary
        filesystem = self.filesystem

        def open_remote(path: Path) -> Any:
            raw = io.BufferedReader(filesystem.open_input_stream(str(path), compression=None))
            return _GzipClosingSource(raw) if str(path).endswith(".gz") else raw

        return open_remote


class _GzipClosingSource(gzip.GzipFile):
    """A gzip stream over an open file that closes the file with itself."""

    def __init__(self, raw: Any) -> None:
        super().__init__(fileobj=raw, mode="rb")
        self._raw = raw

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._raw.close()


def _is_url(text: str) -> bool:
    return "://" in text and not Path(text).exists()


def trace_files(sources: Iterable[os.PathLike | str] | os.PathLike | str) -> TraceFiles:
    """Resolve files, folders (every trace file below, sorted) and pyarrow filesystem URLs (``s3://``,
    ``gs://``, ``file://``...) into the list of files to read; all on one filesystem.

    Checked before anything is read: a missing file or an empty folder raises, so no run half-reads.
    Names starting with ``.`` or ``_`` (``_SUCCESS``, ``.crc``) are passed over as writers' bookkeeping.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    files = TraceFiles([])
    filesystems = set()
    for source in sources:
        text = os.fspath(source)
        if _is_url(text):
            try:
                from pyarrow import fs as pafs
            except ImportError as exc:
                raise ImportError(f"reading {text} needs pyarrow (pip install pyarrow, or the 'ray' extra)") from exc
            filesystem, root = pafs.FileSystem.from_uri(text)
            filesystems.add(filesystem.type_name)
            files.filesystem = filesystem
            info = filesystem.get_file_info(root)
            if info.type == pafs.FileType.NotFound:
                raise FileNotFoundError(f"no trace file or folder at {text}")
            if info.type == pafs.FileType.Directory:
                found = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
                _add_folder(files, text, [f.path for f in found if f.type == pafs.FileType.File])
            else:
                files.paths.append(root)
        else:
            path = Path(text)
            filesystems.add("local")
            if path.is_dir():
                _add_folder(files, text, [str(p) for p in path.rglob("*") if p.is_file()])
            elif path.exists():
                files.paths.append(str(path))
            else:
                raise FileNotFoundError(f"no trace file or folder at {path}")
    if len(filesystems) > 1:
        raise ValueError(f"trace files on several filesystems ({', '.join(sorted(filesystems))}): read them apart")
    if not files.paths:
        raise ValueError("no trace files to read")
    return files


def _add_folder(files: TraceFiles, folder: str, found: list[str]) -> None:
    before = len(files.paths)
    for name in sorted(found):
        base = name.replace("\\", "/").rsplit("/", 1)[-1]
        if base.startswith((".", "_")):
            continue
        if base.lower().endswith(TRACE_SUFFIXES):
            files.paths.append(name)
        else:
            files.ignored.append(name)
    if len(files.paths) == before:
        raise ValueError(f"no trace files ({', '.join(TRACE_SUFFIXES)}) in {folder}")


# ----------------------------------------------------------------------------------------- records


def iter_records(
    paths: Iterable[os.PathLike | str], report: ReadReport, filesystem: Any = None
) -> Iterator[tuple[str, dict]]:
    """Yield ``(location, object)`` from JSONL files, JSON files holding a list, or Parquet files (one record a
    row, see :func:`table_records`); bad lines are counted. ``filesystem``: a pyarrow filesystem to read from."""
    opener = TraceFiles([], filesystem).opener()
    for path in map(Path, paths):
        if path.name.lower().endswith(".parquet"):
            yield from _parquet_records(path, report, filesystem)
            continue
        items = _json_array(path, opener)
        if items is not None:
            for i, item in enumerate(items):
                report.rows_read += 1
                if isinstance(item, dict):
                    yield f"{path}[{i}]", item
                else:
                    report.skip("record is not a JSON object", f"{path}[{i}]")
            continue
        errors = _RowErrors("skip", report)
        for line_no, line in iter_lines(path, errors, MAX_LINE_BYTES, opener):
            try:
                obj = _json(line)
            except json.JSONDecodeError:
                report.skip("malformed JSON line", f"{path}:{line_no}")
                continue
            if not isinstance(obj, dict):
                report.skip("line is not a JSON object", f"{path}:{line_no}")
                continue
            yield f"{path}:{line_no}", obj


def _parquet_records(path: Path, report: ReadReport, filesystem: Any) -> Iterator[tuple[str, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError(f"reading {path} needs pyarrow (pip install pyarrow, or the 'ray' extra)") from exc
    try:
        source = filesystem.open_input_file(str(path)) if filesystem is not None else str(path)
        parquet = pq.ParquetFile(source)
        offset = 0
        for batch in parquet.iter_batches(batch_size=4096):
            yield from table_records(batch, str(path), report, offset)
            offset += batch.num_rows
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError, its IO errors OSErrors
        report.rows_read += 1
        report.skip(f"unreadable Parquet ({type(exc).__name__}: {exc})", str(path))


def table_records(table: Any, where: str, report: ReadReport, offset: int = 0) -> Iterator[tuple[str, dict]]:
    """The rows of a pyarrow table or record batch as records: **columns are the record's keys**.

    This is the Parquet layout (and a Ray Dataset's): one record a row, the top-level keys of the JSONL
    record as columns, nested objects as structs, lists as lists. A null cell is an absent key, so one
    table can hold several record types (runs and feedback, spans and annotations) as the union of their
    columns. Timestamps become ISO-8601 strings, map columns objects, decimals floats: what the JSON
    record would hold.
    """
    for i, row in enumerate(table.to_pylist()):
        report.rows_read += 1
        yield f"{where}[{offset + i}]", _jsonable(row)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        if value and all(isinstance(v, tuple) and len(v) == 2 for v in value):  # a map column's entries
            return {str(k): _jsonable(v) for k, v in value if v is not None}
        return [_jsonable(v) for v in value]
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value

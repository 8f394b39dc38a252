"""The two record types every reader produces, the value coercions they share, and the streaming line reader.

A reader turns one upstream format into :class:`LoggedRetrieval` (a query and the documents it got)
and :class:`Signal` (an outcome attached later: feedback, a citation, a click, a relevance label).
Everything after that (matching documents to the corpus, the signal policy, the report) is shared.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapter_retrievers.data import ReadReport, _finite, _json, _open_binary, _RowErrors, iter_lines

MAX_LINE_BYTES = 16 * 1024 * 1024
POSITIVE_WORDS = frozenset({"relevant", "yes", "true", "thumbs_up", "up", "correct", "good"})
NEGATIVE_WORDS = frozenset(
    {"irrelevant", "not relevant", "unrelated", "no", "false", "thumbs_down", "down", "incorrect", "bad"}
)


@dataclass
class LoggedDocument:
    id: str | None
    content: str | None
    score: float | None
    position: int
    metadata: dict = field(default_factory=dict)


@dataclass
class LoggedRetrieval:
    retrieval_id: str
    query: str
    documents: list[LoggedDocument]
    trace_id: str | None = None
    timestamp: str | None = None
    session: str | None = None
    adapter_version: str | None = None  # the adapter-store version that served it ("base": none), if logged


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
    return LoggedDocument(as_str(d.get("id")), content, score, pos, meta)


def logged_documents(items: list) -> list[LoggedDocument]:
    return [doc for doc in (logged_document(d, i) for i, d in enumerate(items)) if doc is not None]


def _json_array(path: Path) -> list | None:
    """The items of a file holding one JSON array (LangSmith / Langfuse API dumps); ``None`` for JSONL."""
    try:
        with _open_binary(path) as handle:
            if handle.read(1) != b"[":
                return None
            data = _json((b"[" + handle.read()).decode("utf-8"))
    except (EOFError, OSError, zlib.error, UnicodeDecodeError, json.JSONDecodeError):
        return None  # read it line by line: each bad line is then counted where it is
    return data if isinstance(data, list) else None


def iter_records(paths: Iterable[os.PathLike | str], report: ReadReport) -> Iterator[tuple[str, dict]]:
    """Yield ``(location, object)`` from JSONL files or JSON files holding a list; bad lines are counted."""
    errors = _RowErrors("skip", report)
    for path in map(Path, paths):
        items = _json_array(path)
        if items is not None:
            for i, item in enumerate(items):
                report.rows_read += 1
                if isinstance(item, dict):
                    yield f"{path}[{i}]", item
                else:
                    report.skip("record is not a JSON object", f"{path}[{i}]")
            continue
        for line_no, line in iter_lines(path, errors, MAX_LINE_BYTES):
            try:
                obj = _json(line)
            except json.JSONDecodeError:
                report.skip("malformed JSON line", f"{path}:{line_no}")
                continue
            if not isinstance(obj, dict):
                report.skip("line is not a JSON object", f"{path}:{line_no}")
                continue
            yield f"{path}:{line_no}", obj

"""The two record types every reader produces, the value coercions they share, and the streaming line reader.

A reader turns one upstream format into :class:`LoggedRetrieval` (a query and the documents it got)
and :class:`Signal` (an outcome attached later: feedback, a citation, a click, a relevance label).
Everything after that (matching documents to the corpus, the signal policy, the report) is shared.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapter_retrievers.data import ReadReport, _open_text

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
    """A number from a number, a numeric string, or a label word (``thumbs_up`` -> 1, ``irrelevant`` -> 0)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in POSITIVE_WORDS:
            return 1.0
        if lowered in NEGATIVE_WORDS:
            return 0.0
        try:
            return float(lowered)
        except ValueError:
            return None
    return None


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


def iter_records(paths: Iterable[os.PathLike | str], report: ReadReport) -> Iterator[tuple[str, dict]]:
    """Yield ``(location, object)`` from JSONL files or JSON files holding a list; bad lines are counted."""
    for path in map(Path, paths):
        with _open_text(path) as handle:
            first = handle.read(1)
            handle.seek(0)
            if first == "[":  # one JSON array (LangSmith / Langfuse API dumps)
                try:
                    items = json.load(handle)
                except json.JSONDecodeError as exc:
                    report.skip("malformed JSON", f"{path}:{exc.lineno}")
                    continue
                for i, item in enumerate(items):
                    report.rows_read += 1
                    if isinstance(item, dict):
                        yield f"{path}[{i}]", item
                    else:
                        report.skip("record is not a JSON object", f"{path}[{i}]")
                continue
            line_no = 0
            while True:
                try:
                    line = handle.readline(MAX_LINE_BYTES + 1)
                except (EOFError, OSError, UnicodeDecodeError) as exc:
                    report.skip(f"unreadable data ({type(exc).__name__})", f"{path}:{line_no + 1}")
                    break
                if not line:
                    break
                line_no += 1
                if len(line) > MAX_LINE_BYTES:
                    report.skip("line longer than 16 MiB", f"{path}:{line_no}")
                    while line and not line.endswith("\n"):  # drop the rest of the huge line
                        line = handle.readline(MAX_LINE_BYTES)
                    continue
                if not line.strip():
                    continue
                report.rows_read += 1
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    report.skip("malformed JSON line", f"{path}:{line_no}")
                    continue
                if not isinstance(obj, dict):
                    report.skip("line is not a JSON object", f"{path}:{line_no}")
                    continue
                yield f"{path}:{line_no}", obj

"""Turn logged retrievals and outcome signals into training pairs.

Readers (all streaming, line by line, never crashing on a bad line) turn each format into the same two
record types, :class:`LoggedRetrieval` and :class:`Signal`:

- ``ours``: the JSONL written by :class:`~adapter_retrievers.capture.RetrievalLog` and the handlers.
- ``openinference``: OpenInference/OpenTelemetry spans (Arize Phoenix): an OTel SDK ``span.to_json()``
  per line, OTLP/JSON export lines (``resourceSpans``), or Phoenix span-dataframe rows
  (``attributes.*`` columns); RETRIEVER spans give ``input.value`` and
  ``retrieval.documents.{i}.document.id|content|score|metadata``. Span and document annotations
  (``span_id``, ``document_position``, ``name``, ``result.label|score``) give signals.
- ``langsmith``: ``Run`` records with ``run_type == "retriever"`` (``inputs.query``,
  ``outputs.documents``) and ``Feedback`` records (``run_id``/``trace_id``, ``key``, ``score``).
- ``langfuse``: observations with ``type == "RETRIEVER"`` and scores (``traceId``, ``observationId``,
  ``name``, ``value``).
- ``llamaindex``: ``RetrievalStartEvent``/``RetrievalEndEvent`` records (``model_dump()`` of the events,
  paired by ``span_id``).

:func:`harvest` matches documents to a corpus (by id, a metadata id field, or a content hash), applies a
:class:`SignalPolicy`, merges duplicates, and reports every skipped record by reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from adapter_retrievers.data import Corpus, ReadReport, TrainingSet, _open_text

Format = Literal["ours", "openinference", "langsmith", "langfuse", "llamaindex"]
FORMATS: tuple[str, ...] = ("ours", "openinference", "langsmith", "langfuse", "llamaindex")
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


@dataclass
class SignalPolicy:
    """Which signals make positives and which make hard negatives.

    - ``label`` per document: ``value >= label_threshold`` is a positive, below is a hard negative.
    - ``citation`` and ``click`` on a document: positive.
    - answer-level ``feedback``: at or above ``feedback_threshold`` the top ``feedback_top_k`` retrieved
      documents become positives; below it (thumbs down) they become hard negatives when
      ``negative_feedback_as_negatives``.
    - ``feedback_keys``: names of feedback/score records that count as answer feedback (LangSmith
      ``key``, Langfuse/Phoenix ``name``); ``label_keys``: names that are per-document relevance labels.
    """

    feedback_threshold: float = 0.5
    feedback_top_k: int = 1
    negative_feedback_as_negatives: bool = True
    label_threshold: float = 0.5
    use_citations: bool = True
    use_clicks: bool = True
    feedback_keys: tuple[str, ...] = ("user_feedback", "feedback", "thumbs", "user_score", "correctness", "helpful")
    label_keys: tuple[str, ...] = ("relevance", "document_relevance", "relevant", "retrieval_relevance")


@dataclass
class HarvestReport:
    """Counts of what a harvest read, produced and skipped (with reasons and example locations)."""

    records_read: int = 0
    retrievals: int = 0
    signals: int = 0
    pairs: int = 0
    negatives: int = 0
    queries: int = 0
    skipped: ReadReport = field(default_factory=ReadReport)

    def __str__(self) -> str:
        lines = [
            f"read {self.records_read} records: {self.retrievals} retrievals, {self.signals} signals",
            f"produced {self.pairs} positive pairs and {self.negatives} hard negatives over {self.queries} queries",
        ]
        if self.skipped.n_skipped:
            lines.append(f"skipped {self.skipped.n_skipped}:")
            for reason, count in self.skipped.skipped.most_common():
                lines.append(f"  {count} x {reason} (e.g. {', '.join(self.skipped.examples.get(reason, []))})")
        return "\n".join(lines)


@dataclass
class HarvestResult:
    training_set: TrainingSet
    report: HarvestReport
    query_info: dict[str, dict[str, Any]]  # query id -> {"timestamp": first seen, "session": ...}

    def split(self, by: Literal["time", "session"] = "time", fraction: float = 0.2) -> tuple[TrainingSet, TrainingSet]:
        """Hold out the newest queries (``time``) or whole sessions (``session``): held-out queries are new."""
        ids = self.training_set.query_ids
        if len(ids) < 2:
            raise ValueError("need at least 2 harvested queries to split")
        if by == "time":
            ordered = sorted(ids, key=lambda q: (self.query_info.get(q, {}).get("timestamp") or "", q))
            n_held = max(1, round(len(ordered) * fraction))
            held = set(ordered[-n_held:])
        elif by == "session":
            sessions = sorted({str(self.query_info.get(q, {}).get("session")) for q in ids})
            if len(sessions) < 2:
                raise ValueError("all harvested queries come from one session: split by time instead")
            first_seen = {
                s: min(
                    (self.query_info.get(q, {}).get("timestamp") or "")
                    for q in ids
                    if str(self.query_info.get(q, {}).get("session")) == s
                )
                for s in sessions
            }
            sessions.sort(key=lambda s: first_seen[s])
            n_held = max(1, round(len(sessions) * fraction))
            held_sessions = set(sessions[-n_held:])
            held = {q for q in ids if str(self.query_info.get(q, {}).get("session")) in held_sessions}
        else:
            raise ValueError(f"split by 'time' or 'session', got {by!r}")
        ts = self.training_set
        return (
            ts.subset([q for q in ids if q not in held], f"{ts.name} (train)"),
            ts.subset([q for q in ids if q in held], f"{ts.name} (held out, newest by {by})"),
        )


# ------------------------------------------------------------------------------------ helpers


def content_hash(text: str) -> str:
    """Hash of whitespace-normalised text: matches a logged document to the corpus without an id."""
    return hashlib.sha256(" ".join(text.split()).encode("utf-8")).hexdigest()


def _str(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list, bool)):
        return None
    text = str(value).strip()
    return text or None


def _float(value: Any) -> float | None:
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


def _json_maybe(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _document(d: Any, position: int) -> LoggedDocument | None:
    """One logged document from a dict (ours, LangChain ``Document``, Langfuse) or a bare string."""
    if isinstance(d, str):
        return LoggedDocument(None, d, None, position)
    if not isinstance(d, dict):
        return None
    meta = d.get("metadata") if isinstance(d.get("metadata"), dict) else {}
    content = next((d[k] for k in ("content", "page_content", "text") if isinstance(d.get(k), str)), None)
    score = _float(d.get("score"))
    if score is None:
        score = _float(meta.get("score"))
    pos = d.get("position") if isinstance(d.get("position"), int) else position
    return LoggedDocument(_str(d.get("id")), content, score, pos, meta)


def _documents(items: list) -> list[LoggedDocument]:
    return [doc for doc in (_document(d, i) for i, d in enumerate(items)) if doc is not None]


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


Parsed = Iterator["LoggedRetrieval | Signal"]


# ------------------------------------------------------------------------------------ readers


def read_ours(records: Iterable[tuple[str, dict]], report: ReadReport) -> Parsed:
    for where, obj in records:
        kind = obj.get("type")
        if kind == "retrieval":
            query, rid = obj.get("query"), _str(obj.get("id"))
            documents = obj.get("documents")
            if not isinstance(query, str) or not query.strip() or rid is None or not isinstance(documents, list):
                report.skip("retrieval without id, query or documents", where)
                continue
            docs = _documents(documents)
            yield LoggedRetrieval(
                rid,
                query,
                docs,
                _str(obj.get("trace_id")),
                _str(obj.get("timestamp")),
                _str(obj.get("session")) or _str(obj.get("user")),
            )
        elif kind == "signal":
            target, signal_kind = _str(obj.get("target")), obj.get("kind")
            if target is None or signal_kind not in ("feedback", "citation", "click", "label"):
                report.skip("signal without target or with unknown kind", where)
                continue
            position = obj.get("document_position")
            yield Signal(
                target,
                signal_kind,
                _float(obj.get("value")),
                _str(obj.get("document_id")),
                position if isinstance(position, int) else None,
            )
        else:
            report.skip("unknown record type", where)


def _otlp_value(value: dict) -> Any:
    for key in ("stringValue", "intValue", "doubleValue", "boolValue"):
        if key in value:
            return int(value[key]) if key == "intValue" else value[key]
    if "arrayValue" in value:
        return [_otlp_value(v) for v in value["arrayValue"].get("values", [])]
    return None


def _flat_spans(obj: dict) -> Iterator[dict]:
    """Normalise the three span shapes to ``{"span_id", "trace_id", "start", "attributes": {flat}}``."""
    if "resourceSpans" in obj:  # OTLP/JSON export request
        for resource in obj.get("resourceSpans") or []:
            for scope in resource.get("scopeSpans") or []:
                for span in scope.get("spans") or []:
                    attrs = {
                        a.get("key"): _otlp_value(a.get("value") or {})
                        for a in span.get("attributes") or []
                        if isinstance(a, dict)
                    }
                    yield {
                        "span_id": span.get("spanId"),
                        "trace_id": span.get("traceId"),
                        "start": span.get("startTimeUnixNano"),
                        "attributes": attrs,
                    }
    elif isinstance(obj.get("attributes"), dict):  # OTel SDK span.to_json()
        context = obj.get("context") or {}
        yield {
            "span_id": context.get("span_id"),
            "trace_id": context.get("trace_id"),
            "start": obj.get("start_time"),
            "attributes": obj["attributes"],
        }
    elif any(k.startswith("attributes.") for k in obj):  # Phoenix span dataframe row
        attrs: dict[str, Any] = {}
        for key, value in obj.items():
            if not key.startswith("attributes."):
                continue
            name = key[len("attributes.") :]
            if name == "retrieval.documents" and isinstance(value, list):
                for i, doc in enumerate(value):
                    for doc_key, doc_value in (doc or {}).items():
                        attrs[f"retrieval.documents.{i}.{doc_key}"] = doc_value
            else:
                attrs[name] = value
        yield {
            "span_id": obj.get("context.span_id"),
            "trace_id": obj.get("context.trace_id"),
            "start": obj.get("start_time"),
            "attributes": attrs,
        }


_DOC_KEY = re.compile(r"^retrieval\.documents\.(\d+)\.document\.(id|content|score|metadata)$")


def read_openinference(records: Iterable[tuple[str, dict]], report: ReadReport, policy: SignalPolicy) -> Parsed:
    for where, obj in records:
        if "span_id" in obj and ("result" in obj or "label" in obj or "score" in obj) and "attributes" not in obj:
            yield from _annotation(obj, where, report, policy)
            continue
        spans = list(_flat_spans(obj))
        if not spans:
            report.skip("not a span or annotation", where)
            continue
        for span in spans:
            attrs = span["attributes"]
            if attrs.get("openinference.span.kind") != "RETRIEVER":
                continue  # other span kinds are not retrievals; not an error
            query = attrs.get("input.value")
            span_id = _str(span.get("span_id"))
            if not isinstance(query, str) or not query.strip() or span_id is None:
                report.skip("RETRIEVER span without input.value or span id", where)
                continue
            docs: dict[int, dict] = defaultdict(dict)
            for key, value in attrs.items():
                match = _DOC_KEY.match(str(key))
                if match:
                    docs[int(match.group(1))][match.group(2)] = value
            output_ids = _output_document_ids(attrs.get("output.value"))
            documents = []
            for i in sorted(docs):
                d = docs[i]
                meta = _json_maybe(d.get("metadata"))
                meta = meta if isinstance(meta, dict) else {}
                doc_id = _str(d.get("id")) or (output_ids[i] if i < len(output_ids) else None)
                content = d.get("content") if isinstance(d.get("content"), str) else None
                documents.append(LoggedDocument(doc_id, content, _float(d.get("score")), i, meta))
            session = _str(attrs.get("session.id")) or _str(attrs.get("user.id"))
            yield LoggedRetrieval(
                span_id, query, documents, _str(span.get("trace_id")), _str(span.get("start")), session
            )


def _output_document_ids(output: Any) -> list[str | None]:
    """LangChain spans carry no document id attribute, but ``output.value`` may list the documents' ids."""
    parsed = _json_maybe(output)
    documents = parsed.get("documents") if isinstance(parsed, dict) else None
    if not isinstance(documents, list):
        return []
    return [_str(d.get("id")) if isinstance(d, dict) else None for d in documents]


def _annotation(obj: dict, where: str, report: ReadReport, policy: SignalPolicy) -> Parsed:
    result = obj.get("result") if isinstance(obj.get("result"), dict) else obj
    value = _float(result.get("score"))
    if value is None:
        value = _float(result.get("label"))
    name = str(obj.get("name") or "")
    position = obj.get("document_position")
    if value is None:
        report.skip("annotation without a usable label or score", where)
        return
    if isinstance(position, int):
        yield Signal(str(obj["span_id"]), "label", value, document_position=position)
    elif name in policy.feedback_keys or not name:
        yield Signal(str(obj["span_id"]), "feedback", value)
    else:
        report.skip(f"span annotation {name!r} is neither feedback nor a document label", where)


def read_langsmith(records: Iterable[tuple[str, dict]], report: ReadReport, policy: SignalPolicy) -> Parsed:
    for where, obj in records:
        if "run_type" in obj:
            if obj.get("run_type") != "retriever":
                continue
            inputs, outputs = obj.get("inputs") or {}, obj.get("outputs") or {}
            query = inputs.get("query") if isinstance(inputs, dict) else None
            documents = outputs.get("documents") if isinstance(outputs, dict) else None
            run_id = _str(obj.get("id"))
            if not isinstance(query, str) or not query.strip() or run_id is None or not isinstance(documents, list):
                report.skip("retriever run without id, inputs.query or outputs.documents", where)
                continue
            docs = _documents(documents)
            extra = obj.get("extra") if isinstance(obj.get("extra"), dict) else {}
            run_meta = extra.get("metadata") if isinstance(extra.get("metadata"), dict) else {}
            session = next((_str(run_meta[k]) for k in ("session_id", "thread_id", "user_id") if run_meta.get(k)), None)
            yield LoggedRetrieval(run_id, query, docs, _str(obj.get("trace_id")), _str(obj.get("start_time")), session)
        elif "key" in obj and ("run_id" in obj or "trace_id" in obj):
            target = _str(obj.get("run_id")) or _str(obj.get("trace_id"))
            value = _float(obj.get("score"))
            if value is None:
                value = _float(obj.get("value"))
            if target is None or value is None:
                report.skip("feedback without run_id/trace_id or numeric score", where)
                continue
            extra = obj.get("extra") if isinstance(obj.get("extra"), dict) else {}
            yield from _named_signal(
                target, str(obj.get("key")), value, _str(extra.get("document_id")), policy, report, where
            )
        else:
            report.skip("neither a run nor a feedback record", where)


def _named_signal(
    target: str, name: str, value: float, doc_id: str | None, policy: SignalPolicy, report: ReadReport, where: str
) -> Parsed:
    """A named feedback/score record (LangSmith ``key``, Langfuse ``name``) as a signal, per the policy."""
    if name in policy.label_keys and doc_id is not None:
        yield Signal(target, "label", value, document_id=doc_id)
    elif name in policy.feedback_keys:
        yield Signal(target, "feedback", value)
    elif name in ("citation", "click") and doc_id is not None:
        yield Signal(target, name, value, document_id=doc_id)
    else:
        report.skip(f"feedback or score {name!r} is not configured as a signal", where)


def read_langfuse(records: Iterable[tuple[str, dict]], report: ReadReport, policy: SignalPolicy) -> Parsed:
    for where, obj in records:
        if "type" in obj and ("startTime" in obj or "traceId" in obj) and "value" not in obj:
            if obj.get("type") != "RETRIEVER":
                continue
            query = _json_maybe(obj.get("input"))
            if isinstance(query, dict):
                query = query.get("query") or query.get("input") or query.get("question")
            output = _json_maybe(obj.get("output"))
            documents = output.get("documents") if isinstance(output, dict) else output
            obs_id = _str(obj.get("id"))
            if not isinstance(query, str) or not query.strip() or obs_id is None or not isinstance(documents, list):
                report.skip("RETRIEVER observation without id, input query or output documents", where)
                continue
            docs = _documents(documents)
            metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
            session = _str(obj.get("sessionId")) or _str(metadata.get("session_id")) or _str(obj.get("userId"))
            yield LoggedRetrieval(obs_id, query, docs, _str(obj.get("traceId")), _str(obj.get("startTime")), session)
        elif "value" in obj and "name" in obj and ("traceId" in obj or "observationId" in obj):
            target = _str(obj.get("observationId")) or _str(obj.get("traceId"))
            value = _float(obj.get("value"))
            if value is None:
                value = _float(obj.get("stringValue"))
            metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
            if target is None or value is None:
                report.skip("score without traceId/observationId or usable value", where)
            else:
                yield from _named_signal(
                    target, str(obj.get("name")), value, _str(metadata.get("document_id")), policy, report, where
                )
        else:
            report.skip("neither an observation nor a score", where)


def read_llamaindex(records: Iterable[tuple[str, dict]], report: ReadReport) -> Parsed:
    starts: dict[str, tuple[str, str | None]] = {}
    for where, obj in records:
        name = obj.get("class_name")
        span_id = _str(obj.get("span_id"))
        if name == "RetrievalStartEvent":
            query = _query_of(obj.get("str_or_query_bundle"))
            if span_id and query:
                starts[span_id] = (query, _str(obj.get("timestamp")))
            else:
                report.skip("RetrievalStartEvent without span_id or query", where)
        elif name == "RetrievalEndEvent":
            query = _query_of(obj.get("str_or_query_bundle")) or starts.get(span_id or "", (None, None))[0]
            nodes = obj.get("nodes")
            if not span_id or not query or not isinstance(nodes, list):
                report.skip("RetrievalEndEvent without span_id, query or nodes", where)
                continue
            docs = []
            for i, item in enumerate(nodes):
                node = (item or {}).get("node") if isinstance(item, dict) else None
                if not isinstance(node, dict):
                    continue
                meta = node.get("metadata") if isinstance(node.get("metadata"), dict) else {}
                text = node.get("text") if isinstance(node.get("text"), str) else None
                docs.append(LoggedDocument(_str(node.get("id_")), text, _float(item.get("score")), i, meta))
            timestamp = starts.pop(span_id, (None, None))[1] or _str(obj.get("timestamp"))
            tags = obj.get("tags") if isinstance(obj.get("tags"), dict) else {}
            yield LoggedRetrieval(span_id, query, docs, None, timestamp, _str(tags.get("session_id")))
        elif name in ("feedback", "signal") or obj.get("type") == "signal":
            yield from read_ours([(where, {**obj, "type": "signal"})], report)
        else:
            report.skip("not a retrieval event", where)


def _query_of(value: Any) -> str | None:
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, dict):
        return _str(value.get("query_str"))
    return None


# ------------------------------------------------------------------------------------ harvest


def read_traces(
    paths: Iterable[os.PathLike | str], fmt: str, report: ReadReport, policy: SignalPolicy | None = None
) -> Parsed:
    policy = policy or SignalPolicy()
    records = iter_records(paths, report)
    if fmt == "ours":
        return read_ours(records, report)
    if fmt == "openinference":
        return read_openinference(records, report, policy)
    if fmt == "langsmith":
        return read_langsmith(records, report, policy)
    if fmt == "langfuse":
        return read_langfuse(records, report, policy)
    if fmt == "llamaindex":
        return read_llamaindex(records, report)
    raise ValueError(f"unknown trace format {fmt!r}; choose one of {FORMATS}")


class _DocumentMatcher:
    """Find a logged document in the corpus: by id, by a metadata id field, then by content hash."""

    def __init__(self, corpus: Corpus, metadata_id_fields: tuple[str, ...]) -> None:
        self.corpus = corpus
        self.fields = metadata_id_fields
        self._by_hash: dict[str, str] | None = None

    def __call__(self, doc: LoggedDocument) -> str | None:
        if doc.id is not None and doc.id in self.corpus:
            return doc.id
        for name in self.fields:
            value = _str(doc.metadata.get(name))
            if value is not None and value in self.corpus:
                return value
        if doc.content:
            if self._by_hash is None:
                self._by_hash = {content_hash(t): i for i, t in zip(self.corpus.ids, self.corpus.texts)}
            return self._by_hash.get(content_hash(doc.content))
        return None


def harvest(
    paths: Iterable[os.PathLike | str] | os.PathLike | str,
    corpus: Corpus,
    fmt: str = "ours",
    policy: SignalPolicy | None = None,
    metadata_id_fields: tuple[str, ...] = ("id", "doc_id", "document_id", "_id", "source_id"),
    name: str | None = None,
) -> HarvestResult:
    """Read traces in ``fmt`` and turn them into a :class:`TrainingSet` of (query, relevant doc) pairs.

    The files are read twice (signals first, then the retrievals that have one), so signals may come
    before or after their retrieval and from other files, and memory stays bounded by the number of
    signals however many retrievals were logged.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    policy = policy or SignalPolicy()
    read = ReadReport()
    report = HarvestReport(skipped=read)
    match = _DocumentMatcher(corpus, metadata_id_fields)
    # Pass 1 keeps only the signals (few); pass 2 streams the retrievals and keeps only those that
    # have a signal. Memory grows with the number of signals, not with the number of retrievals.
    signals = [item for item in read_traces(paths, fmt, ReadReport(), policy) if isinstance(item, Signal)]
    targets = {s.target for s in signals}
    retrievals: dict[str, tuple[str, str | None, str | None, tuple]] = {}
    trace_to_retrievals: dict[str, list[str]] = defaultdict(list)
    for item in read_traces(paths, fmt, read, policy):
        if isinstance(item, Signal):
            report.signals += 1
            continue
        report.retrievals += 1
        if item.retrieval_id not in targets and item.trace_id not in targets:
            read.skip("retrieval with no signal", item.retrieval_id)
            continue
        docs = tuple((match(d), d.position, d.id) for d in item.documents)
        retrievals[item.retrieval_id] = (item.query, item.timestamp, item.session, docs)
        if item.trace_id:
            trace_to_retrievals[item.trace_id].append(item.retrieval_id)
    report.records_read = read.rows_read

    positives: dict[str, dict[str, float]] = defaultdict(dict)
    negatives: dict[str, set[str]] = defaultdict(set)
    for signal in signals:
        matched = [signal.target] if signal.target in retrievals else trace_to_retrievals.get(signal.target, [])
        if not matched:
            read.skip("signal for an unknown retrieval or trace", signal.target)
            continue
        for rid in matched:
            _apply_signal(signal, rid, retrievals[rid][3], policy, positives, negatives, read, match)

    queries: dict[str, str] = {}
    relevant: dict[str, dict[str, float]] = {}
    hard: dict[str, set[str]] = {}
    info: dict[str, dict[str, Any]] = {}
    for rid, (query, timestamp, session, _docs) in retrievals.items():
        if not positives.get(rid) and not negatives.get(rid):
            continue
        qid = "q-" + hashlib.sha256(" ".join(query.split()).lower().encode()).hexdigest()[:16]
        queries[qid] = query
        relevant.setdefault(qid, {}).update(positives.get(rid, {}))
        hard.setdefault(qid, set()).update(negatives.get(rid, set()))
        seen = info.setdefault(qid, {"timestamp": timestamp, "session": session})
        if timestamp and (seen["timestamp"] is None or timestamp < seen["timestamp"]):
            seen["timestamp"], seen["session"] = timestamp, session
    ts = TrainingSet(queries, relevant, hard, name or f"harvest:{fmt}", read)
    report.queries, report.pairs = len(ts), ts.n_pairs
    report.negatives = sum(len(v) for v in ts.negatives.values())
    return HarvestResult(ts, report, info)


def _apply_signal(
    signal: Signal,
    rid: str,
    docs: tuple,
    policy: SignalPolicy,
    positives: dict,
    negatives: dict,
    read: ReadReport,
    match: _DocumentMatcher,
) -> None:
    """Turn one signal on one retrieval into positive and negative corpus ids."""

    def resolve() -> str | None:
        for corpus_id, position, logged_id in docs:
            if (signal.document_id is not None and signal.document_id in (logged_id, corpus_id)) or (
                signal.document_position is not None and signal.document_position == position
            ):
                return corpus_id
        if signal.document_id is not None:  # cited/clicked but not among the logged documents
            return match(LoggedDocument(signal.document_id, None, None, -1))
        return None

    value = signal.value if signal.value is not None else 1.0
    if signal.kind == "feedback":
        top = [d for d in sorted(docs, key=lambda d: d[1])[: policy.feedback_top_k]]
        if any(corpus_id is None for corpus_id, _, _ in top):
            read.skip("unknown document (not in the corpus)", rid)
        ids = [corpus_id for corpus_id, _, _ in top if corpus_id is not None]
        if value >= policy.feedback_threshold:
            for doc_id in ids:
                positives[rid][doc_id] = max(positives[rid].get(doc_id, 0.0), 1.0)
        elif policy.negative_feedback_as_negatives:
            negatives[rid].update(ids)
        return
    if (signal.kind == "citation" and not policy.use_citations) or (signal.kind == "click" and not policy.use_clicks):
        return
    doc_id = resolve()
    if doc_id is None:
        read.skip("unknown document (not in the corpus)", rid)
        return
    if signal.kind in ("citation", "click") or value >= policy.label_threshold:
        positives[rid][doc_id] = max(positives[rid].get(doc_id, 0.0), 1.0 if signal.kind != "label" else value)
    else:
        negatives[rid].add(doc_id)

"""Reader for OpenInference / OpenTelemetry spans, as Arize Phoenix stores them (``format="openinference"``).

Span shapes (OpenInference semantic conventions, ``openinference-semantic-conventions>=0.1``):

- an OpenTelemetry SDK ``span.to_json()`` per line (``context.span_id``, ``attributes`` flat);
- OTLP/JSON export requests (``resourceSpans`` -> ``scopeSpans`` -> ``spans``, typed attribute values),
  as an OTLP file exporter or collector writes them;
- Phoenix client span dicts (``phoenix.client.Client().spans.get_spans()``, one JSON object a line): the span
  kind is the top-level ``span_kind`` and document metadata is flattened (``...document.metadata.<key>``);
- Phoenix span-dataframe rows (``get_spans_dataframe()`` then ``to_json(orient="records", lines=True)``:
  ``context.span_id`` and ``attributes.*`` columns, epoch-millisecond times).

RETRIEVER spans give ``input.value`` and ``retrieval.documents.{i}.document.id|content|score|metadata``;
every other span is counted as skipped under its own reason. Span start times become ISO-8601 UTC.

Signals come from Phoenix annotations in every shape Phoenix hands them out:

- span annotation dicts (``get_span_annotations()``: ``span_id``, ``name``, ``result.label|score``) and
  annotation-dataframe rows (``get_span_annotations_dataframe().reset_index()`` to JSON lines:
  ``span_id``, ``annotation_name``, ``result.label``, ``result.score``);
- document annotations (``span_id``, ``document_position``, ``name``, ``result``: the shape
  ``log_document_annotations`` takes), or span nodes of Phoenix's GraphQL API
  (``{"spanId", "documentEvaluations": [{"name", "label", "score", "documentPosition"}]}``), the only
  place Phoenix serves them;
- trace annotations, and span annotations carrying a ``trace_id`` (``export-phoenix`` writes answer
  feedback found on a trace's root span so), apply to every retrieval of the trace.

A ``relevance`` (``SignalPolicy.label_keys``) annotation at a document position is a per-document label;
a ``user_feedback`` (``feedback_keys``) annotation is answer feedback, which names no document: see
:class:`~adapter_retrievers.harvest.policy.SignalPolicy` for how it is used.
:mod:`adapter_retrievers.harvest.phoenix` pulls all of these from a Phoenix server.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from adapter_retrievers.data import ReadReport
from adapter_retrievers.harvest.policy import SignalPolicy
from adapter_retrievers.harvest.records import (
    LoggedDocument,
    LoggedRetrieval,
    Parsed,
    Records,
    Signal,
    as_float,
    as_str,
    json_maybe,
)
from adapter_retrievers.interleaving import CANDIDATE_VERSION

FORMAT = "openinference"
# the SDK keeps document metadata as one JSON string; Phoenix flattens it to one attribute per key
_DOC_KEY = re.compile(r"^retrieval\.documents\.(\d{1,6})\.document\.(id|content|score|metadata)(?:\.(.+))?$")
_ANNOTATION_VALUES = ("result", "label", "score", "result.label", "result.score")


def _is_annotation(obj: dict) -> bool:
    if "attributes" in obj or any(k.startswith("attributes.") for k in obj):
        return False
    return ("span_id" in obj or "trace_id" in obj) and any(k in obj for k in _ANNOTATION_VALUES)


def read_openinference(records: Records, report: ReadReport, policy: SignalPolicy) -> Parsed:
    for where, obj in records:
        if _is_annotation(obj):
            yield from _annotation(obj, where, report, policy)
            continue
        if "documentEvaluations" in obj:
            yield from _graphql_span(obj, where, report, policy)
            continue
        if "annotation_name" in obj and "span_id" not in obj:
            report.skip("annotation row without span_id (write get_span_annotations_dataframe().reset_index())", where)
            continue
        spans = list(_flat_spans(obj))
        if not spans:
            report.skip("not a span or annotation", where)
            continue
        report.rows_read += len(spans) - 1  # an OTLP line holds many spans: each one is a record
        for span in spans:
            attrs = span["attributes"]
            if span["kind"] != "RETRIEVER":
                report.skip("span that is not a RETRIEVER span", where)
                continue
            query = attrs.get("input.value")
            span_id = as_str(span.get("span_id"))
            if not isinstance(query, str) or not query.strip() or span_id is None:
                report.skip("RETRIEVER span without input.value or span id", where)
                continue
            session = as_str(attrs.get("session.id")) or as_str(attrs.get("user.id"))
            run_metadata = _run_metadata(attrs)  # LangChain run metadata: the serving version, the candidate
            yield LoggedRetrieval(
                span_id,
                query,
                _span_documents(attrs),
                as_str(span.get("trace_id")),
                _timestamp(span["start"]),
                session,
                as_str(run_metadata.get("adapter_version")),
                as_str(run_metadata.get(CANDIDATE_VERSION)),  # interleaved: documents name their ranker
            )


def _run_metadata(attrs: dict) -> dict:
    """The span's ``metadata`` attribute: one JSON string from the SDK, one ``metadata.<key>`` attribute per key
    from Phoenix (which flattens it)."""
    meta = json_maybe(attrs.get("metadata"))
    meta = dict(meta) if isinstance(meta, dict) else {}
    for key, value in attrs.items():
        if isinstance(key, str) and key.startswith("metadata."):
            meta.setdefault(key[len("metadata.") :], value)
    return meta


def _span_documents(attrs: dict) -> list[LoggedDocument]:
    docs: dict[int, dict] = defaultdict(dict)
    flat_metadata: dict[int, dict] = defaultdict(dict)
    for key, value in attrs.items():
        match = _DOC_KEY.match(str(key))
        if match is None:
            continue
        index, name, sub_key = int(match.group(1)), match.group(2), match.group(3)
        if sub_key is None:
            docs[index][name] = value
        elif name == "metadata":
            flat_metadata[index][sub_key] = value
    output_ids = _output_document_ids(attrs.get("output.value"))
    documents = []
    for i in sorted(docs.keys() | flat_metadata.keys()):
        d = docs[i]
        meta = json_maybe(d.get("metadata"))
        meta = {**(meta if isinstance(meta, dict) else {}), **flat_metadata[i]}
        doc_id = as_str(d.get("id")) or (output_ids[i] if i < len(output_ids) else None)
        content = d.get("content") if isinstance(d.get("content"), str) else None
        documents.append(LoggedDocument(doc_id, content, as_float(d.get("score")), i, meta))
    return documents


def _timestamp(value: Any) -> str | None:
    """A span start as ISO-8601 UTC: OTLP nanoseconds, pandas' epoch milliseconds and ISO strings then compare."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str) and not value.strip().isdigit():
        return as_str(value)
    try:
        number = float(value)
        seconds = next((number / scale for scale in (1e9, 1e6, 1e3) if number / scale > 1e8), number)
        return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat()
    except (TypeError, ValueError, OverflowError, OSError):
        return as_str(value)


def _dicts(value: Any) -> list[dict]:
    """The objects in a JSON list (anything else in it, or a non-list, gives nothing)."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _otlp_value(value: Any) -> Any:
    if not isinstance(value, dict):
        return None
    for key in ("stringValue", "intValue", "doubleValue", "boolValue"):
        if key in value:
            if key != "intValue":
                return value[key]
            try:
                return int(value[key])  # OTLP/JSON writes 64-bit integers as strings
            except (TypeError, ValueError):
                return None
    if "arrayValue" in value:
        array = value["arrayValue"]
        return [_otlp_value(v) for v in _dicts(array.get("values") if isinstance(array, dict) else None)]
    return None


def _flat_spans(obj: dict) -> Iterator[dict]:
    """Normalise the span shapes to ``{"span_id", "trace_id", "start", "kind", "attributes": {flat}}``."""
    if "resourceSpans" in obj:  # OTLP/JSON export request
        for resource in _dicts(obj.get("resourceSpans")):
            for scope in _dicts(resource.get("scopeSpans")):
                for span in _dicts(scope.get("spans")):
                    attrs = {as_str(a.get("key")): _otlp_value(a.get("value")) for a in _dicts(span.get("attributes"))}
                    yield {
                        "span_id": span.get("spanId"),
                        "trace_id": span.get("traceId"),
                        "start": span.get("startTimeUnixNano"),
                        "kind": attrs.get("openinference.span.kind"),
                        "attributes": attrs,
                    }
    elif isinstance(obj.get("attributes"), dict):  # OTel SDK span.to_json(), Phoenix client.spans.get_spans()
        context = obj.get("context") if isinstance(obj.get("context"), dict) else {}
        attrs = obj["attributes"]
        yield {
            "span_id": context.get("span_id"),
            "trace_id": context.get("trace_id"),
            "start": obj.get("start_time"),
            "kind": attrs.get("openinference.span.kind") or obj.get("span_kind"),  # Phoenix: top-level only
            "attributes": attrs,
        }
    elif any(k.startswith("attributes.") for k in obj):  # Phoenix span dataframe row
        attrs: dict[str, Any] = {}
        for key, value in obj.items():
            if not key.startswith("attributes."):
                continue
            name = key[len("attributes.") :]
            if name == "retrieval.documents" and isinstance(value, list):
                for i, doc in enumerate(value):
                    for doc_key, doc_value in (doc if isinstance(doc, dict) else {}).items():
                        attrs[f"retrieval.documents.{i}.{doc_key}"] = doc_value
            else:
                attrs[name] = value
        yield {
            "span_id": obj.get("context.span_id"),
            "trace_id": obj.get("context.trace_id"),
            "start": obj.get("start_time"),
            "kind": attrs.get("openinference.span.kind") or obj.get("span_kind"),
            "attributes": attrs,
        }


def _output_document_ids(output: Any) -> list[str | None]:
    """LangChain spans carry no document id attribute, but ``output.value`` may list the documents' ids."""
    parsed = json_maybe(output)
    documents = parsed.get("documents") if isinstance(parsed, dict) else None
    if not isinstance(documents, list):
        return []
    return [as_str(d.get("id")) if isinstance(d, dict) else None for d in documents]


def _graphql_span(obj: dict, where: str, report: ReadReport, policy: SignalPolicy) -> Parsed:
    """A span node from Phoenix's GraphQL API: each of its ``documentEvaluations`` is one record."""
    notes = obj.get("documentEvaluations")
    span_id = as_str(obj.get("spanId")) or as_str(obj.get("span_id"))
    if span_id is None or not isinstance(notes, list) or not notes:
        report.skip("GraphQL span without spanId or document annotations", where)
        return
    report.rows_read += len(notes) - 1
    for note in notes:
        if not isinstance(note, dict):
            report.skip("document annotation that is not an object", where)
            continue
        yield from _annotation(
            {**note, "span_id": span_id, "document_position": note.get("documentPosition")}, where, report, policy
        )


def _annotation(obj: dict, where: str, report: ReadReport, policy: SignalPolicy) -> Parsed:
    """One Phoenix annotation: client dicts (``result: {label, score}``), dataframe rows (``annotation_name``,
    ``result.label``, ``result.score``) or flat GraphQL fields (``label``, ``score``)."""
    result = obj.get("result") if isinstance(obj.get("result"), dict) else {}
    scores_then_labels = (obj.get("result.score"), obj.get("score"), obj.get("result.label"), obj.get("label"))
    if result:
        scores_then_labels = (result.get("score"), result.get("label"))
    value = next((v for v in map(as_float, scores_then_labels) if v is not None), None)
    name = as_str(obj.get("name")) or as_str(obj.get("annotation_name")) or ""
    position = obj.get("document_position")
    if isinstance(position, float) and position.is_integer():  # a dataframe column with gaps is float
        position = int(position)
    is_document = isinstance(position, int) and not isinstance(position, bool)
    # trace annotations, and answer feedback export-phoenix found on a trace's root span, target the trace
    target = (None if is_document else as_str(obj.get("trace_id"))) or as_str(obj.get("span_id"))
    if target is None:
        report.skip("annotation without span_id or trace_id", where)
    elif value is None:
        report.skip("annotation without a usable label or score", where)
    elif is_document:
        yield Signal(target, "label", value, document_position=position)
    elif name in policy.feedback_keys or not name:
        yield Signal(target, "feedback", value)
    else:
        report.skip(f"span annotation {name!r} is neither feedback nor a document label", where)

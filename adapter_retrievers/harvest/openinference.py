"""Reader for OpenInference / OpenTelemetry spans, as Arize Phoenix stores them (``format="openinference"``).

Span shapes (OpenInference semantic conventions, ``openinference-semantic-conventions>=0.1``):

- an OpenTelemetry SDK ``span.to_json()`` per line (``context.span_id``, ``attributes`` flat);
- OTLP/JSON export requests (``resourceSpans`` -> ``scopeSpans`` -> ``spans``, typed attribute values),
  as an OTLP file exporter or collector writes them;
- Phoenix span-dataframe rows (``px.Client().get_spans_dataframe()`` then
  ``to_json(orient="records", lines=True)``: ``context.span_id`` and ``attributes.*`` columns).

RETRIEVER spans give ``input.value`` and ``retrieval.documents.{i}.document.id|content|score|metadata``.
Span and document annotations (``span_id``, ``document_position``, ``name``, ``result.label|score``)
give signals.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
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

FORMAT = "openinference"
_DOC_KEY = re.compile(r"^retrieval\.documents\.(\d{1,6})\.document\.(id|content|score|metadata)$")


def read_openinference(records: Records, report: ReadReport, policy: SignalPolicy) -> Parsed:
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
                report.skip("span that is not a RETRIEVER span", where)
                continue
            query = attrs.get("input.value")
            span_id = as_str(span.get("span_id"))
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
                meta = json_maybe(d.get("metadata"))
                meta = meta if isinstance(meta, dict) else {}
                doc_id = as_str(d.get("id")) or (output_ids[i] if i < len(output_ids) else None)
                content = d.get("content") if isinstance(d.get("content"), str) else None
                documents.append(LoggedDocument(doc_id, content, as_float(d.get("score")), i, meta))
            session = as_str(attrs.get("session.id")) or as_str(attrs.get("user.id"))
            yield LoggedRetrieval(
                span_id, query, documents, as_str(span.get("trace_id")), as_str(span.get("start")), session
            )


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
    """Normalise the three span shapes to ``{"span_id", "trace_id", "start", "attributes": {flat}}``."""
    if "resourceSpans" in obj:  # OTLP/JSON export request
        for resource in _dicts(obj.get("resourceSpans")):
            for scope in _dicts(resource.get("scopeSpans")):
                for span in _dicts(scope.get("spans")):
                    attrs = {as_str(a.get("key")): _otlp_value(a.get("value")) for a in _dicts(span.get("attributes"))}
                    yield {
                        "span_id": span.get("spanId"),
                        "trace_id": span.get("traceId"),
                        "start": span.get("startTimeUnixNano"),
                        "attributes": attrs,
                    }
    elif isinstance(obj.get("attributes"), dict):  # OTel SDK span.to_json()
        context = obj.get("context") if isinstance(obj.get("context"), dict) else {}
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
                    for doc_key, doc_value in (doc if isinstance(doc, dict) else {}).items():
                        attrs[f"retrieval.documents.{i}.{doc_key}"] = doc_value
            else:
                attrs[name] = value
        yield {
            "span_id": obj.get("context.span_id"),
            "trace_id": obj.get("context.trace_id"),
            "start": obj.get("start_time"),
            "attributes": attrs,
        }


def _output_document_ids(output: Any) -> list[str | None]:
    """LangChain spans carry no document id attribute, but ``output.value`` may list the documents' ids."""
    parsed = json_maybe(output)
    documents = parsed.get("documents") if isinstance(parsed, dict) else None
    if not isinstance(documents, list):
        return []
    return [as_str(d.get("id")) if isinstance(d, dict) else None for d in documents]


def _annotation(obj: dict, where: str, report: ReadReport, policy: SignalPolicy) -> Parsed:
    result = obj.get("result") if isinstance(obj.get("result"), dict) else obj
    value = as_float(result.get("score"))
    if value is None:
        value = as_float(result.get("label"))
    name = as_str(obj.get("name")) or ""
    position = obj.get("document_position")
    span_id = as_str(obj.get("span_id"))
    if value is None or span_id is None:
        report.skip("annotation without a span id or a usable label or score", where)
        return
    if isinstance(position, int) and not isinstance(position, bool):
        yield Signal(span_id, "label", value, document_position=position)
    elif name in policy.feedback_keys or not name:
        yield Signal(span_id, "feedback", value)
    else:
        report.skip(f"span annotation {name!r} is neither feedback nor a document label", where)

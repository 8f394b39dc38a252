"""Reader for LlamaIndex instrumentation events (``format="llamaindex"``).

Reads ``RetrievalStartEvent`` / ``RetrievalEndEvent`` records as ``event.model_dump()`` gives them
(``llama-index-core>=0.10.20`` instrumentation: ``class_name``, ``span_id``, ``timestamp``,
``str_or_query_bundle``, ``nodes`` of ``NodeWithScore``, ``tags``), paired by ``span_id``; signals in
our schema (``{"type": "signal", ...}``) may sit in the same file. A user gets such a file from an event
handler that writes each event's ``model_dump_json()``, or uses our ``RetrievalEventLogger``, which
writes our own log instead.
"""

from __future__ import annotations

from typing import Any

from adapter_retrievers.data import ReadReport
from adapter_retrievers.harvest.ours import signal_record
from adapter_retrievers.harvest.policy import SignalPolicy
from adapter_retrievers.harvest.records import LoggedDocument, LoggedRetrieval, Parsed, Records, as_float, as_str
from adapter_retrievers.interleaving import CANDIDATE_VERSION

FORMAT = "llamaindex"


def read_llamaindex(records: Records, report: ReadReport, policy: SignalPolicy | None = None) -> Parsed:
    starts: dict[str, tuple[str, str | None]] = {}
    for where, obj in records:
        name = obj.get("class_name")
        span_id = as_str(obj.get("span_id"))
        if name == "RetrievalStartEvent":
            query = _query_of(obj.get("str_or_query_bundle"))
            if span_id and query:
                starts[span_id] = (query, as_str(obj.get("timestamp")))
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
                docs.append(LoggedDocument(as_str(node.get("id_")), text, as_float(item.get("score")), i, meta))
            timestamp = starts.pop(span_id, (None, None))[1] or as_str(obj.get("timestamp"))
            tags = obj.get("tags") if isinstance(obj.get("tags"), dict) else {}
            yield LoggedRetrieval(
                span_id,
                query,
                docs,
                None,
                timestamp,
                as_str(tags.get("session_id")),
                as_str(tags.get("adapter_version")),
                as_str(tags.get(CANDIDATE_VERSION)),
            )
        elif name in ("feedback", "signal") or obj.get("type") == "signal":
            yield from signal_record(obj, where, report)
        else:
            report.skip("not a retrieval event", where)


def _query_of(value: Any) -> str | None:
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, dict):
        return as_str(value.get("query_str"))
    return None

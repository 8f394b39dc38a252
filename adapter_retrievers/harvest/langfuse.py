"""Reader for Langfuse exports (``format="langfuse"``).

Reads observations with ``type == "RETRIEVER"`` (``id``, ``traceId``, ``startTime``, ``input`` holding
the query, ``output`` holding the documents, ``sessionId``/``userId``/``metadata.session_id``) and
scores (``traceId`` and/or ``observationId``, ``name``, ``value`` or ``stringValue``,
``metadata.document_id``), as the Langfuse public API (v3: ``GET /api/public/observations`` and
``/api/public/scores``, or the Python SDK's ``api.observations.get_many`` / ``api.score_v_2.get``)
returns them, one JSON object a line or one JSON array per file.
"""

from __future__ import annotations

from adapter_retrievers.data import ReadReport
from adapter_retrievers.harvest.policy import SignalPolicy, named_signal
from adapter_retrievers.harvest.records import (
    LoggedRetrieval,
    Parsed,
    Records,
    as_float,
    as_str,
    json_maybe,
    logged_documents,
)

FORMAT = "langfuse"


def read_langfuse(records: Records, report: ReadReport, policy: SignalPolicy) -> Parsed:
    for where, obj in records:
        if "type" in obj and ("startTime" in obj or "traceId" in obj) and "value" not in obj:
            if obj.get("type") != "RETRIEVER":
                report.skip("observation that is not a RETRIEVER", where)
                continue
            query = json_maybe(obj.get("input"))
            if isinstance(query, dict):
                query = query.get("query") or query.get("input") or query.get("question")
            output = json_maybe(obj.get("output"))
            documents = output.get("documents") if isinstance(output, dict) else output
            obs_id = as_str(obj.get("id"))
            if not isinstance(query, str) or not query.strip() or obs_id is None or not isinstance(documents, list):
                report.skip("RETRIEVER observation without id, input query or output documents", where)
                continue
            metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
            session = as_str(obj.get("sessionId")) or as_str(metadata.get("session_id")) or as_str(obj.get("userId"))
            yield LoggedRetrieval(
                obs_id,
                query,
                logged_documents(documents),
                as_str(obj.get("traceId")),
                as_str(obj.get("startTime")),
                session,
            )
        elif "value" in obj and "name" in obj and ("traceId" in obj or "observationId" in obj):
            target = as_str(obj.get("observationId")) or as_str(obj.get("traceId"))
            value = as_float(obj.get("value"))
            if value is None:
                value = as_float(obj.get("stringValue"))
            metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
            if target is None or value is None:
                report.skip("score without traceId/observationId or usable value", where)
            else:
                yield from named_signal(
                    target, str(obj.get("name")), value, as_str(metadata.get("document_id")), policy, report, where
                )
        else:
            report.skip("neither an observation nor a score", where)

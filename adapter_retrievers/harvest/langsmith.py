"""Reader for LangSmith exports (``format="langsmith"``).

Reads LangSmith ``Run`` records (``run_type == "retriever"``: ``inputs.query``, ``outputs.documents``
as serialised LangChain ``Document``s, ``extra.metadata.session_id|thread_id|user_id``) and ``Feedback``
records (``run_id`` or ``trace_id``, ``key``, ``score`` or ``value``, ``extra.document_id``), as the
LangSmith SDK (``langsmith>=0.1``: ``Client.list_runs`` / ``Client.list_feedback``, each object's
``.dict()`` / ``model_dump()``) returns them, one JSON object a line or one JSON array per file.
"""

from __future__ import annotations

from adapter_retrievers.data import ReadReport
from adapter_retrievers.harvest.policy import SignalPolicy, named_signal
from adapter_retrievers.harvest.records import LoggedRetrieval, Parsed, Records, as_float, as_str, logged_documents

FORMAT = "langsmith"


def read_langsmith(records: Records, report: ReadReport, policy: SignalPolicy) -> Parsed:
    for where, obj in records:
        if "run_type" in obj:
            if obj.get("run_type") != "retriever":
                report.skip("run that is not a retriever run", where)
                continue
            inputs, outputs = obj.get("inputs") or {}, obj.get("outputs") or {}
            query = inputs.get("query") if isinstance(inputs, dict) else None
            documents = outputs.get("documents") if isinstance(outputs, dict) else None
            run_id = as_str(obj.get("id"))
            if not isinstance(query, str) or not query.strip() or run_id is None or not isinstance(documents, list):
                report.skip("retriever run without id, inputs.query or outputs.documents", where)
                continue
            extra = obj.get("extra") if isinstance(obj.get("extra"), dict) else {}
            run_meta = extra.get("metadata") if isinstance(extra.get("metadata"), dict) else {}
            keys = ("session_id", "thread_id", "user_id")
            session = next((as_str(run_meta[k]) for k in keys if run_meta.get(k)), None)
            yield LoggedRetrieval(
                run_id,
                query,
                logged_documents(documents),
                as_str(obj.get("trace_id")),
                as_str(obj.get("start_time")),
                session,
            )
        elif "key" in obj and ("run_id" in obj or "trace_id" in obj):
            target = as_str(obj.get("run_id")) or as_str(obj.get("trace_id"))
            value = as_float(obj.get("score"))
            if value is None:
                value = as_float(obj.get("value"))
            if target is None or value is None:
                report.skip("feedback without run_id/trace_id or numeric score", where)
                continue
            extra = obj.get("extra") if isinstance(obj.get("extra"), dict) else {}
            yield from named_signal(
                target, str(obj.get("key")), value, as_str(extra.get("document_id")), policy, report, where
            )
        else:
            report.skip("neither a run nor a feedback record", where)

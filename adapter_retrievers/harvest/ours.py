"""Reader for our own capture log (``format="ours"``).

Schema: :mod:`adapter_retrievers.capture` (``"schema": 1``), one JSON object a line, ``type`` =
``retrieval`` or ``signal``. Written by :class:`~adapter_retrievers.capture.RetrievalLog` and by the
LangChain (``RetrievalLogger``) and LlamaIndex (``RetrievalEventLogger``) capture handlers; plain or
gzipped JSONL.
"""

from __future__ import annotations

from adapter_retrievers.data import ReadReport
from adapter_retrievers.harvest.policy import SignalPolicy
from adapter_retrievers.harvest.records import (
    LoggedRetrieval,
    Parsed,
    Records,
    Signal,
    as_float,
    as_str,
    logged_documents,
)

FORMAT = "ours"
SIGNAL_KINDS = ("feedback", "citation", "click", "label")


def read_ours(records: Records, report: ReadReport, policy: SignalPolicy | None = None) -> Parsed:
    for where, obj in records:
        kind = obj.get("type")
        if kind == "retrieval":
            query, rid = obj.get("query"), as_str(obj.get("id"))
            documents = obj.get("documents")
            if not isinstance(query, str) or not query.strip() or rid is None or not isinstance(documents, list):
                report.skip("retrieval without id, query or documents", where)
                continue
            interleaving = obj.get("interleaving") if isinstance(obj.get("interleaving"), dict) else {}
            yield LoggedRetrieval(
                rid,
                query,
                logged_documents(documents),
                as_str(obj.get("trace_id")),
                as_str(obj.get("timestamp")),
                as_str(obj.get("session")) or as_str(obj.get("user")),
                as_str(obj.get("adapter_version")),
                as_str(interleaving.get("candidate")),
            )
        elif kind == "signal":
            yield from signal_record(obj, where, report)
        else:
            report.skip("unknown record type", where)


def signal_record(obj: dict, where: str, report: ReadReport) -> Parsed:
    """One ``{"type": "signal", ...}`` record of our schema (also written beside LlamaIndex events)."""
    target, signal_kind = as_str(obj.get("target")), obj.get("kind")
    if target is None or signal_kind not in SIGNAL_KINDS:
        report.skip("signal without target or with unknown kind", where)
        return
    value = as_float(obj.get("value"))
    if value is None and obj.get("value") is not None:  # no value means 1; a value that is not a number is bad
        report.skip("signal whose value is not a finite number", where)
        return
    position = obj.get("document_position")
    yield Signal(
        target,
        signal_kind,
        value,
        as_str(obj.get("document_id")),
        position if isinstance(position, int) and not isinstance(position, bool) else None,
    )

"""An append-only JSONL log of retrievals and the outcome signals attached to them later.

Schema (one JSON object per line, ``"schema": 1``):

``{"type": "retrieval", "id", "trace_id", "timestamp", "query", "session", "user", "source",
"documents": [{"id", "content", "score", "position", "metadata", "ranker"?, "propensity"?}],
"adapter_version"?, "interleaving"?}``
    One retrieval, written by the LangChain callback handler, the LlamaIndex event handler, or
    :meth:`RetrievalLog.log_retrieval`. ``adapter_version`` (optional) names the adapter-store
    version that served it (``"base"``: the base model). An interleaved retrieval (see
    :mod:`adapter_retrievers.interleaving`) has ``"interleaving": {"method": "team_draft", "candidate":
    version}`` and each document the ``ranker`` whose pick it was (``"live"``, ``"candidate"``, or ``"shared"``
    where both would have picked it: :data:`~adapter_retrievers.interleaving.SHARED`) and its
    ``propensity``: the probability, over the draft's coin flips, that it was shown at all.

``{"type": "signal", "target", "kind", "value", "document_id", "document_position", "timestamp"}``
    An outcome attached later to a retrieval (``target`` = its ``id`` or ``trace_id``): ``kind`` is
    ``feedback`` (thumbs up/down as 1/0, or a score), ``citation`` (the answer cited the document),
    ``click``, or ``label`` (a human or LLM relevance judgement of one document, 1 = relevant).

Lines are written whole with one ``write`` under a lock (and ``O_APPEND``), so concurrent writers
in one process never interleave and a crash loses at most the line being written.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from adapter_retrievers._files import append_line

SCHEMA_VERSION = 1
SIGNAL_KINDS = ("feedback", "citation", "click", "label")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def is_capture_log(path: os.PathLike | str) -> bool:
    """True for an empty file or one whose first line is a record of this log (it carries ``schema``)."""
    try:
        with open(path, "rb") as handle:
            first = handle.readline(1 << 20)
    except OSError:
        return False
    if not first.strip() or first.lstrip().startswith(b'{"schema"'):  # ours; maybe still being written
        return True
    try:
        record = json.loads(first)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(record, dict) and "schema" in record


class RetrievalLog:
    """Append retrievals and signals to ``path`` (created if missing).

    Appending is what a log does, so an existing log is added to; a file that is not one is refused.
    """

    def __init__(self, path: os.PathLike | str) -> None:
        from adapter_retrievers.outputs import check_output

        self.path = check_output(
            path, name="log", continues=is_capture_log, continues_what="a capture log", can_overwrite=False
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _append(self, record: Mapping[str, Any]) -> None:
        line = json.dumps({"schema": SCHEMA_VERSION, **record}, ensure_ascii=False, default=str) + "\n"
        with self._lock:
            append_line(self.path, line)

    def log_retrieval(
        self,
        query: str,
        documents: Sequence[Mapping[str, Any]],
        retrieval_id: str | None = None,
        trace_id: str | None = None,
        session: str | None = None,
        user: str | None = None,
        source: str = "manual",
        timestamp: str | None = None,
        adapter_version: str | None = None,
        candidate_version: str | None = None,
    ) -> str:
        """Record one retrieval; ``documents`` are dicts with ``id``, ``content``, ``score``, ``metadata``
        (and, interleaved, ``ranker`` and ``propensity``: taken from the metadata the wrappers add when absent).

        ``adapter_version``: the adapter-store version that served it (``"base"``: the base model), when
        known; training data collected under an adapter is biased by it. ``candidate_version``: the
        candidate it was interleaved with, if it was.
        """
        from adapter_retrievers.interleaving import METHOD, PROPENSITY_KEY, RANKER_KEY

        retrieval_id = retrieval_id or str(uuid.uuid4())
        docs = []
        for i, d in enumerate(documents):
            metadata = d.get("metadata") or {}
            doc = {"id": d.get("id"), "content": d.get("content"), "score": d.get("score"), "position": i}
            doc["metadata"] = metadata
            for field, key in (("ranker", RANKER_KEY), ("propensity", PROPENSITY_KEY)):
                value = d.get(field, metadata.get(key))
                if value is not None:
                    doc[field] = value
            docs.append(doc)
        record = {
            "type": "retrieval",
            "id": retrieval_id,
            "trace_id": trace_id,
            "timestamp": timestamp or now_iso(),
            "query": query,
            "session": session,
            "user": user,
            "source": source,
            "documents": docs,
        }
        if adapter_version is not None:  # optional: older logs and readers do without it
            record["adapter_version"] = adapter_version
        if candidate_version is not None:
            record["interleaving"] = {"method": METHOD, "candidate": candidate_version}
        self._append(record)
        return retrieval_id

    def add_signal(
        self,
        target: str,
        kind: str,
        value: float | None = 1.0,
        document_id: str | None = None,
        document_position: int | None = None,
    ) -> None:
        if kind not in SIGNAL_KINDS:
            raise ValueError(f"signal kind must be one of {SIGNAL_KINDS}, got {kind!r}")
        self._append(
            {
                "type": "signal",
                "target": target,
                "kind": kind,
                "value": value,
                "document_id": document_id,
                "document_position": document_position,
                "timestamp": now_iso(),
            }
        )

    def add_feedback(self, target: str, score: float) -> None:
        """Answer-level feedback: 1/0 for thumbs up/down, or a score in [0, 1]."""
        self.add_signal(target, "feedback", float(score))

    def add_citations(self, target: str, document_ids: Iterable[str]) -> None:
        for doc_id in document_ids:
            self.add_signal(target, "citation", 1.0, document_id=doc_id)

    def add_click(self, target: str, document_id: str) -> None:
        self.add_signal(target, "click", 1.0, document_id=document_id)

    def add_label(
        self, target: str, document_id: str | None = None, relevance: float = 1.0, document_position: int | None = None
    ) -> None:
        """A relevance judgement of one retrieved document (1 = relevant, 0 = not relevant)."""
        self.add_signal(target, "label", float(relevance), document_id, document_position)

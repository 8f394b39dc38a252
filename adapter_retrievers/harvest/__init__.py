"""Turn logged retrievals and outcome signals into training pairs.

One module per source format, each turning its records into the same two types
(:class:`LoggedRetrieval`, :class:`Signal`, in :mod:`.records`):

- :mod:`.ours`: the JSONL written by :class:`~adapter_retrievers.capture.RetrievalLog` and the handlers.
- :mod:`.openinference`: OpenInference/OpenTelemetry spans and annotations (Arize Phoenix).
- :mod:`.langsmith`: LangSmith runs and feedback.
- :mod:`.langfuse`: Langfuse RETRIEVER observations and scores.
- :mod:`.llamaindex`: LlamaIndex retrieval instrumentation events.

:mod:`.phoenix` (not imported here: it needs ``arize-phoenix-client``) pulls spans and their span, trace and
document annotations from a running Arize Phoenix server into the JSONL that ``openinference`` reads.

:func:`harvest` (:mod:`.join`) matches documents to a corpus (by id, a metadata id field, or a content
hash), applies a :class:`SignalPolicy` (:mod:`.policy`), merges duplicates, and reports every record
(:mod:`.report`): read, merged, or skipped with its reason.
"""

from __future__ import annotations

from adapter_retrievers.harvest.join import (
    FORMATS,
    READERS,
    DocumentMatcher,
    content_hash,
    harvest,
    query_id,
    read_traces,
)
from adapter_retrievers.harvest.langfuse import read_langfuse
from adapter_retrievers.harvest.langsmith import read_langsmith
from adapter_retrievers.harvest.llamaindex import read_llamaindex
from adapter_retrievers.harvest.openinference import read_openinference
from adapter_retrievers.harvest.ours import read_ours
from adapter_retrievers.harvest.policy import SignalPolicy
from adapter_retrievers.harvest.records import (
    MAX_LINE_BYTES,
    LoggedDocument,
    LoggedRetrieval,
    Signal,
    iter_records,
)
from adapter_retrievers.harvest.report import HarvestReport, HarvestResult, RetrievalFeedback

Format = str

__all__ = [
    "FORMATS",
    "MAX_LINE_BYTES",
    "READERS",
    "DocumentMatcher",
    "Format",
    "HarvestReport",
    "HarvestResult",
    "LoggedDocument",
    "LoggedRetrieval",
    "RetrievalFeedback",
    "Signal",
    "SignalPolicy",
    "content_hash",
    "harvest",
    "iter_records",
    "query_id",
    "read_langfuse",
    "read_langsmith",
    "read_llamaindex",
    "read_openinference",
    "read_ours",
    "read_traces",
]

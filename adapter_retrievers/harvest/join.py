"""The harvest itself: read traces in any format, match documents to the corpus, apply the signal policy.

The files are read twice (signals first, then only the retrievals that have one), so signals may come
before or after their retrieval and from other files, and memory grows with the number of signals,
not with the number of retrievals.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from adapter_retrievers.data import Corpus, ReadReport, TrainingSet
from adapter_retrievers.harvest import langfuse, langsmith, llamaindex, openinference, ours
from adapter_retrievers.harvest.policy import SignalPolicy, apply_signal
from adapter_retrievers.harvest.records import LoggedDocument, Parsed, Records, Signal, as_str, iter_records
from adapter_retrievers.harvest.report import HarvestReport, HarvestResult

Reader = Callable[[Records, ReadReport, SignalPolicy], Parsed]

#: format name -> reader; a new source is a new module with a ``FORMAT`` and a reader, registered here
READERS: dict[str, Reader] = {
    ours.FORMAT: ours.read_ours,
    openinference.FORMAT: openinference.read_openinference,
    langsmith.FORMAT: langsmith.read_langsmith,
    langfuse.FORMAT: langfuse.read_langfuse,
    llamaindex.FORMAT: llamaindex.read_llamaindex,
}
FORMATS: tuple[str, ...] = tuple(READERS)
DEFAULT_METADATA_ID_FIELDS = ("id", "doc_id", "document_id", "_id", "source_id")


def read_traces(
    paths: Iterable[os.PathLike | str], fmt: str, report: ReadReport, policy: SignalPolicy | None = None
) -> Parsed:
    """Stream :class:`LoggedRetrieval` and :class:`Signal` records from trace files in ``fmt``."""
    if fmt not in READERS:
        raise ValueError(f"unknown trace format {fmt!r}; choose one of {FORMATS}")
    return READERS[fmt](iter_records(paths, report), report, policy or SignalPolicy())


def content_hash(text: str) -> str:
    """Hash of whitespace-normalised text: matches a logged document to the corpus without an id."""
    return hashlib.sha256(" ".join(text.split()).encode("utf-8")).hexdigest()


def query_id(query: str) -> str:
    """One training query per distinct question (case and whitespace folded): repeats are merged."""
    return "q-" + hashlib.sha256(" ".join(query.split()).lower().encode()).hexdigest()[:16]


class DocumentMatcher:
    """Find a logged document in the corpus: by id, by a metadata id field, then by content hash."""

    def __init__(self, corpus: Corpus, metadata_id_fields: tuple[str, ...] = DEFAULT_METADATA_ID_FIELDS) -> None:
        self.corpus = corpus
        self.fields = metadata_id_fields
        self._by_hash: dict[str, str] | None = None

    def __call__(self, doc: LoggedDocument) -> str | None:
        if doc.id is not None and doc.id in self.corpus:
            return doc.id
        for name in self.fields:
            value = as_str(doc.metadata.get(name))
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
    metadata_id_fields: tuple[str, ...] = DEFAULT_METADATA_ID_FIELDS,
    name: str | None = None,
) -> HarvestResult:
    """Read traces in ``fmt`` and turn them into a :class:`TrainingSet` of (query, relevant doc) pairs.

    Every record read is accounted for in the report: it became a retrieval or a signal, was merged
    into an existing pair, or was skipped with a reason.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if fmt not in READERS:
        raise ValueError(f"unknown trace format {fmt!r}; choose one of {FORMATS}")
    policy = policy or SignalPolicy()
    read = ReadReport()
    report = HarvestReport(skipped=read)
    match = DocumentMatcher(corpus, metadata_id_fields)
    # Pass 1 keeps only the signals (few); pass 2 streams the retrievals and keeps only those that
    # have a signal. Memory grows with the number of signals, not with the number of retrievals.
    signals = [item for item in read_traces(paths, fmt, ReadReport(), policy) if isinstance(item, Signal)]
    targets = {s.target for s in signals}
    retrievals: dict[str, tuple[str, str | None, str | None, tuple, str | None]] = {}
    trace_to_retrievals: dict[str, list[str]] = defaultdict(list)
    for item in read_traces(paths, fmt, read, policy):
        if isinstance(item, Signal):
            report.signals += 1
            continue
        report.retrievals += 1
        if item.retrieval_id not in targets and item.trace_id not in targets:
            read.skip("retrieval with no signal", item.retrieval_id)
            continue
        if item.retrieval_id in retrievals:
            report.merged.skip("retrieval logged twice (same id)", item.retrieval_id)
        docs = tuple((match(d), d.position, d.id) for d in item.documents)
        retrievals[item.retrieval_id] = (item.query, item.timestamp, item.session, docs, item.adapter_version)
        if item.trace_id:
            trace_to_retrievals[item.trace_id].append(item.retrieval_id)
    report.records_read = read.rows_read

    positives: dict[str, dict[str, float]] = defaultdict(dict)
    negatives: dict[str, set[str]] = defaultdict(set)
    signals.sort(key=lambda s: s.kind == "feedback")  # answer feedback last: it yields to named documents
    for signal in signals:
        matched = [signal.target] if signal.target in retrievals else trace_to_retrievals.get(signal.target, [])
        if not matched:
            read.skip("signal for an unknown retrieval or trace", signal.target)
            continue
        for rid in matched:
            docs = retrievals[rid][3]
            used = apply_signal(signal, rid, docs, policy, positives, negatives, read, match, report.merged)
            if used == "top_k":
                report.feedback_to_top_k += 1
            elif used == "named":
                report.feedback_with_named_documents += 1

    queries: dict[str, str] = {}
    relevant: dict[str, dict[str, float]] = {}
    hard: dict[str, set[str]] = {}
    info: dict[str, dict[str, Any]] = {}
    for rid, (query, timestamp, session, _docs, version) in retrievals.items():
        if not positives.get(rid) and not negatives.get(rid):
            continue
        qid = query_id(query)
        for doc_id in positives.get(rid, {}):
            if doc_id in relevant.get(qid, {}):
                report.merged.skip("same question and document in another retrieval (one pair kept)", rid)
        queries[qid] = query
        relevant.setdefault(qid, {}).update(positives.get(rid, {}))
        hard.setdefault(qid, set()).update(negatives.get(rid, set()))
        seen = info.setdefault(qid, {"timestamp": timestamp, "session": session, "adapter_version": version})
        if timestamp and (seen["timestamp"] is None or timestamp < seen["timestamp"]):
            seen["timestamp"], seen["session"], seen["adapter_version"] = timestamp, session, version
    ts = TrainingSet(queries, relevant, hard, name or f"harvest:{fmt}", read)
    report.queries, report.pairs = len(ts), ts.n_pairs
    report.negatives = sum(len(v) for v in ts.negatives.values())
    return HarvestResult(ts, report, info)

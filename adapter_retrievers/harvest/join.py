"""The harvest: read traces in any format, match documents to the corpus, apply the signal policy.

It runs as stages that :func:`harvest` calls in one process and
:func:`adapter_retrievers.integrations.ray.harvest_on_ray` calls on Ray Data; the stages are the same
functions, so both give the same pairs and the same report:

1. :func:`signals_of` (pass 1): the signals of one file, each with its :data:`Ordinal` (where it was read);
2. :func:`retrievals_of` (pass 2): the retrievals of one file that a signal may point to (by retrieval or
   trace id, :func:`has_signal`), counting every record in the file's :class:`HarvestReport`;
3. :func:`resolve_targets`: which retrievals each signal applies to (the retrieval it names, else every
   retrieval of the trace it names);
4. :func:`apply_signals`: one retrieval (:func:`latest_copy` of its logged copies) and its signals, in read
   order with answer feedback last, turned into positive and negative corpus ids;
5. :func:`assemble`: the reports and the per-retrieval outcomes, in read order, into a :class:`HarvestResult`
   (with each retrieval's :class:`RetrievalFeedback`: where the named documents were shown, which ranker of an
   interleaved list picked them, how likely they were to be shown).

The files are read twice (signals first, then only the retrievals that have one), so signals may come
before or after their retrieval and from other files, and memory grows with the number of signals,
not with the number of retrievals. A reader sees one file at a time (a LlamaIndex start event pairs with
its end event in the same file).
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from adapter_retrievers.data import Corpus, ReadReport, TrainingSet
from adapter_retrievers.harvest import langfuse, langsmith, llamaindex, openinference, ours
from adapter_retrievers.harvest.policy import SignalPolicy, apply_signal
from adapter_retrievers.harvest.records import (
    LoggedDocument,
    LoggedRetrieval,
    Parsed,
    Records,
    Signal,
    TraceFiles,
    as_str,
    iter_records,
    trace_files,
)
from adapter_retrievers.harvest.report import HarvestReport, HarvestResult, RetrievalFeedback

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

#: where a record was read: (file or block index, index of the record among what its reader yielded)
Ordinal = tuple[int, int]
OrderedSignal = tuple[Ordinal, Signal]


def check_format(fmt: str) -> None:
    if fmt not in READERS:
        raise ValueError(f"unknown trace format {fmt!r}; choose one of {FORMATS}")


def read_traces(
    paths: Iterable[os.PathLike | str], fmt: str, report: ReadReport, policy: SignalPolicy | None = None
) -> Parsed:
    """Stream :class:`LoggedRetrieval` and :class:`Signal` records from trace files in ``fmt``, file by file."""
    check_format(fmt)
    files = trace_files(list(paths))
    for unit in range(len(files.paths)):
        yield from parse_file(files, unit, fmt, report, policy or SignalPolicy())


def parse(records: Records, fmt: str, report: ReadReport, policy: SignalPolicy) -> Parsed:
    """One file's (or one block's) records through the format's reader."""
    return READERS[fmt](records, report, policy)


def parse_file(files: TraceFiles, unit: int, fmt: str, report: ReadReport, policy: SignalPolicy) -> Parsed:
    """File number ``unit`` of ``files`` through the format's reader: the unit of work of both harvests."""
    return parse(iter_records([files.paths[unit]], report, files.filesystem), fmt, report, policy)


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

    def __getstate__(self) -> dict[str, Any]:
        """What a worker needs (ids and content hashes), not the corpus with its vectors."""
        if self._by_hash is None:
            self._by_hash = {content_hash(t): i for i, t in zip(self.corpus.ids, self.corpus.texts)}
        return {"corpus": frozenset(self.corpus.ids), "fields": self.fields, "_by_hash": self._by_hash}


@dataclass
class KeptRetrieval:
    """A retrieval a signal may point to, as the join needs it (its documents not yet matched to the corpus)."""

    retrieval_id: str
    ordinal: Ordinal
    query: str
    documents: list[LoggedDocument]
    trace_id: str | None
    timestamp: str | None
    session: str | None
    adapter_version: str | None
    candidate_version: str | None = None


@dataclass
class Outcome:
    """What the signals on one retrieval produced, and what they skipped or merged."""

    retrieval: KeptRetrieval
    positives: dict[str, float] = field(default_factory=dict)
    negatives: set[str] = field(default_factory=set)
    skipped: ReadReport = field(default_factory=ReadReport)
    merged: ReadReport = field(default_factory=ReadReport)
    feedback_to_top_k: int = 0
    feedback_with_named_documents: int = 0
    feedback: RetrievalFeedback | None = None


def records_of(parsed: Parsed, unit: int, report: HarvestReport) -> Iterator[OrderedSignal | KeptRetrieval]:
    """One file (or block) ``unit`` read: its signals with where each was read, and its retrievals; every record
    is counted in ``report`` (whose ``skipped`` must be the report the reader writes to)."""
    for i, item in enumerate(parsed):
        if isinstance(item, Signal):
            report.signals += 1
            yield (unit, i), item
        else:
            report.retrievals += 1
            yield _kept(item, (unit, i))


def signals_of(parsed: Parsed, unit: int) -> list[OrderedSignal]:
    """Pass 1 of the single process: the signals of ``unit``."""
    return [item for item in records_of(parsed, unit, HarvestReport()) if isinstance(item, tuple)]


def has_signal(retrieval: KeptRetrieval, targets: Container[str]) -> bool:
    """A signal may point to it (by its id or its trace id): the join keeps it."""
    return retrieval.retrieval_id in targets or retrieval.trace_id in targets


def retrievals_of(parsed: Parsed, unit: int, targets: Container[str], report: HarvestReport) -> list[KeptRetrieval]:
    """Pass 2: the retrievals of ``unit`` a signal may point to; every record counted in ``report``, the others
    as "retrieval with no signal" after the reader's own skips (examples in read order)."""
    kept, unsignalled, examples = [], 0, []
    for item in records_of(parsed, unit, report):
        if not isinstance(item, KeptRetrieval):
            continue
        if has_signal(item, targets):
            kept.append(item)
        else:
            unsignalled += 1
            examples += [item.retrieval_id] if len(examples) < 5 else []
    if unsignalled:
        report.skipped.skipped["retrieval with no signal"] += unsignalled
        report.skipped.examples.setdefault("retrieval with no signal", []).extend(examples)
    return kept


def _kept(item: LoggedRetrieval, ordinal: Ordinal) -> KeptRetrieval:
    return KeptRetrieval(
        item.retrieval_id,
        ordinal,
        item.query,
        item.documents,
        item.trace_id,
        item.timestamp,
        item.session,
        item.adapter_version,
        item.candidate_version,
    )


def signal_order(item: OrderedSignal) -> tuple[bool, Ordinal]:
    """Signals apply in read order, answer feedback last (it yields to documents other signals named)."""
    return item[1].kind == "feedback", item[0]


def resolve_targets(
    signals: Iterable[OrderedSignal], retrievals: Iterable[KeptRetrieval]
) -> tuple[dict[str, list[OrderedSignal]], list[OrderedSignal]]:
    """Which retrievals each signal applies to: the one it names, else every retrieval of the trace it names.

    ``retrievals`` must hold every kept retrieval whose id or trace id is one of the signals' targets (a Ray
    group of one target holds exactly those). Returns the signals per retrieval id and the signals that
    name no known retrieval or trace.
    """
    retrievals = sorted(retrievals, key=lambda r: r.ordinal)
    ids = {r.retrieval_id for r in retrievals}
    traces: dict[str, list[str]] = defaultdict(list)
    for r in retrievals:
        if r.trace_id and r.retrieval_id not in traces[r.trace_id]:
            traces[r.trace_id].append(r.retrieval_id)
    applied: dict[str, list[OrderedSignal]] = defaultdict(list)
    unknown = []
    for ordinal, signal in signals:
        matched = [signal.target] if signal.target in ids else traces.get(signal.target, [])
        if not matched:
            unknown.append((ordinal, signal))
        for rid in matched:
            applied[rid].append((ordinal, signal))
    return applied, unknown


def latest_copy(copies: Sequence[KeptRetrieval], merged: ReadReport) -> KeptRetrieval:
    """One retrieval logged more than once under one id: the last copy read, at the place of the first."""
    copies = sorted(copies, key=lambda r: r.ordinal)
    for copy in copies[1:]:
        merged.skip("retrieval logged twice (same id)", copy.retrieval_id)
    return replace(copies[-1], ordinal=copies[0].ordinal)


def apply_signals(
    retrieval: KeptRetrieval,
    signals: Iterable[OrderedSignal],
    policy: SignalPolicy,
    match: Callable[[LoggedDocument], str | None],
    merged: ReadReport | None = None,
) -> Outcome:
    """One retrieval's signals, in :func:`signal_order`, as positive and negative corpus ids (the policy's)."""
    rid = retrieval.retrieval_id
    outcome = Outcome(retrieval, merged=merged if merged is not None else ReadReport())
    corpus_ids = [match(d) for d in retrieval.documents]
    docs = tuple((corpus_id, d.position, d.id) for corpus_id, d in zip(corpus_ids, retrieval.documents))
    positives: dict[str, dict[str, float]] = {rid: outcome.positives}
    negatives: dict[str, set[str]] = {rid: outcome.negatives}
    from_feedback: set[str] = set()  # positives only answer feedback gave (it names no document)
    for _, signal in sorted(signals, key=signal_order):
        before = set(outcome.positives)
        used = apply_signal(signal, rid, docs, policy, positives, negatives, outcome.skipped, match, outcome.merged)
        if used == "top_k":
            outcome.feedback_to_top_k += 1
            from_feedback |= set(outcome.positives) - before
        elif used == "named":
            outcome.feedback_with_named_documents += 1
    outcome.feedback = _feedback(retrieval, corpus_ids, [d for d in outcome.positives if d not in from_feedback])
    return outcome


def _feedback(retrieval: KeptRetrieval, corpus_ids: list[str | None], named: list[str]) -> RetrievalFeedback:
    """Where the documents a click, citation or label named were shown, whose pick they were, how likely shown."""
    shown = {}
    for corpus_id, doc in zip(corpus_ids, retrieval.documents):
        if corpus_id is not None and corpus_id not in shown:
            shown[corpus_id] = doc
    where = [shown.get(d) for d in named]
    return RetrievalFeedback(
        retrieval.retrieval_id,
        query_id(retrieval.query),
        retrieval.timestamp,
        retrieval.adapter_version,
        retrieval.candidate_version,
        len(retrieval.documents),
        named,
        [d.position if d is not None else None for d in where],
        [d.ranker if d is not None else None for d in where],
        [d.propensity if d is not None else None for d in where],
    )


def assemble(
    reports: Iterable[HarvestReport],
    unknown: Iterable[OrderedSignal],
    outcomes: Iterable[Outcome],
    name: str,
) -> HarvestResult:
    """The files' reports (in read order), the signals for no known retrieval, and the outcomes (in the order
    their retrievals were first read) as one training set and one report."""
    report = HarvestReport()
    for part in reports:
        report.merge(part)
    read = report.skipped
    for _, signal in sorted(unknown, key=signal_order):
        read.skip("signal for an unknown retrieval or trace", signal.target)
    queries: dict[str, str] = {}
    relevant: dict[str, dict[str, float]] = {}
    hard: dict[str, set[str]] = {}
    info: dict[str, dict[str, Any]] = {}
    feedback: list[RetrievalFeedback] = []
    for outcome in sorted(outcomes, key=lambda o: o.retrieval.ordinal):
        read.merge(outcome.skipped)
        report.merged.merge(outcome.merged)
        report.feedback_to_top_k += outcome.feedback_to_top_k
        report.feedback_with_named_documents += outcome.feedback_with_named_documents
        if not outcome.positives and not outcome.negatives:
            continue
        if outcome.feedback is not None:
            feedback.append(outcome.feedback)
        r = outcome.retrieval
        qid = query_id(r.query)
        for doc_id in outcome.positives:
            if doc_id in relevant.get(qid, {}):
                report.merged.skip("same question and document in another retrieval (one pair kept)", r.retrieval_id)
        queries[qid] = r.query
        relevant.setdefault(qid, {}).update(outcome.positives)
        hard.setdefault(qid, set()).update(outcome.negatives)
        first = {"timestamp": r.timestamp, "session": r.session, "adapter_version": r.adapter_version}
        first["propensity"] = outcome.feedback.propensity if outcome.feedback is not None else None
        seen = info.setdefault(qid, first)
        if r.timestamp and (seen["timestamp"] is None or r.timestamp < seen["timestamp"]):
            seen.update(first)
    report.records_read = read.rows_read
    ts = TrainingSet(queries, relevant, hard, name, read)
    report.queries, report.pairs = len(ts), ts.n_pairs
    report.negatives = sum(len(v) for v in ts.negatives.values())
    return HarvestResult(ts, report, info, feedback)


def harvest(
    paths: Iterable[os.PathLike | str] | os.PathLike | str,
    corpus: Corpus,
    fmt: str = "ours",
    policy: SignalPolicy | None = None,
    metadata_id_fields: tuple[str, ...] = DEFAULT_METADATA_ID_FIELDS,
    name: str | None = None,
) -> HarvestResult:
    """Read traces in ``fmt`` and turn them into a :class:`TrainingSet` of (query, relevant doc) pairs.

    ``paths``: trace files (JSONL, JSONL.gz, a JSON array, Parquet with one record a row, see
    :func:`~adapter_retrievers.harvest.records.table_records`), folders of them, or pyarrow filesystem URLs.
    Every record read is accounted for in the report: it became a retrieval or a signal, was merged
    into an existing pair, or was skipped with a reason.
    """
    check_format(fmt)
    files = trace_files(paths)
    policy = policy or SignalPolicy()
    match = DocumentMatcher(corpus, metadata_id_fields)
    units = range(len(files.paths))
    # Pass 1 keeps only the signals (few); pass 2 keeps only the retrievals that have one.
    signals = [s for unit in units for s in signals_of(parse_file(files, unit, fmt, ReadReport(), policy), unit)]
    targets = {signal.target for _, signal in signals}
    reports, kept = [], []
    for unit in units:
        report = HarvestReport()
        kept += retrievals_of(parse_file(files, unit, fmt, report.skipped, policy), unit, targets, report)
        reports.append(report)
    reports.append(ignored_files_report(files))
    applied, unknown = resolve_targets(signals, kept)
    copies: dict[str, list[KeptRetrieval]] = defaultdict(list)
    for retrieval in kept:
        copies[retrieval.retrieval_id].append(retrieval)
    outcomes = []
    for rid, logged in copies.items():
        merged = ReadReport()
        outcomes.append(apply_signals(latest_copy(logged, merged), applied.get(rid, []), policy, match, merged))
    return assemble(reports, unknown, outcomes, name or f"harvest:{fmt}")


def ignored_files_report(files: TraceFiles) -> HarvestReport:
    """Files of a folder that are not trace files, counted as skipped (not as records)."""
    report = HarvestReport()
    for path in files.ignored:
        report.skipped.skip("file in the folder that is not a trace file (by its name)", path)
    return report

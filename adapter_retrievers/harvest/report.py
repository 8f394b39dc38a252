"""What a harvest returns: the training set, counts of everything read and skipped, and time/session splits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from adapter_retrievers.data import ReadReport, TrainingSet


@dataclass
class HarvestReport:
    """Counts of what a harvest read, produced and skipped (with reasons and example locations).

    ``merged`` counts what was folded into an existing pair rather than dropped: a query asked again
    (several retrievals, one training query) and a document confirmed again by another signal.
    Answer feedback names no document: ``feedback_to_top_k`` counts uses on the top-ranked retrieved
    documents (``SignalPolicy.feedback_top_k``), ``feedback_with_named_documents`` thumbs up on retrievals
    where a click, citation or label named the useful documents instead.
    """

    records_read: int = 0
    retrievals: int = 0
    signals: int = 0
    pairs: int = 0
    negatives: int = 0
    queries: int = 0
    skipped: ReadReport = field(default_factory=ReadReport)
    merged: ReadReport = field(default_factory=ReadReport)
    feedback_to_top_k: int = 0
    feedback_with_named_documents: int = 0

    def merge(self, other: HarvestReport) -> None:
        """Add the counts of another part of the same harvest (one file's, one retrieval's)."""
        for name in ("records_read", "retrievals", "signals", "pairs", "negatives", "queries"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.feedback_to_top_k += other.feedback_to_top_k
        self.feedback_with_named_documents += other.feedback_with_named_documents
        self.skipped.merge(other.skipped)
        self.merged.merge(other.merged)

    def __str__(self) -> str:
        lines = [
            f"read {self.records_read} records: {self.retrievals} retrievals, {self.signals} signals",
            f"produced {self.pairs} positive pairs and {self.negatives} hard negatives over {self.queries} queries",
        ]
        if self.feedback_to_top_k or self.feedback_with_named_documents:
            lines.append(
                f"answer feedback (names no document): {self.feedback_to_top_k} x applied to the top-ranked "
                f"retrieved documents (SignalPolicy.feedback_top_k), {self.feedback_with_named_documents} x thumbs "
                "up left to the documents a click, citation or label named"
            )
        for title, counts in (("merged", self.merged), ("skipped", self.skipped)):
            if counts.n_skipped:
                lines.append(f"{title} {counts.n_skipped}:")
                for reason, count in counts.skipped.most_common():
                    lines.append(f"  {count} x {reason} (e.g. {', '.join(counts.examples.get(reason, []))})")
        return "\n".join(lines)


@dataclass
class RetrievalFeedback:
    """What the signals said about one retrieval, beyond its pairs: which documents a click, citation or
    positive label named (corpus ids), where each was shown, which ranker of an interleaved list picked it
    (``"live"``/``"candidate"``/``"shared"``; None when the list was not interleaved) and how likely it was to be shown.

    The nightly refresh credits interleaved comparisons from it and profiles each night's feedback.
    """

    retrieval_id: str
    query_id: str
    timestamp: str | None
    adapter_version: str | None
    candidate_version: str | None
    n_shown: int
    documents: list[str]
    positions: list[int | None]
    rankers: list[str | None]
    propensities: list[float | None]

    @property
    def credit(self) -> dict[str, int]:
        """Named documents per ranker (see :func:`adapter_retrievers.interleaving.credit`)."""
        from adapter_retrievers.interleaving import credit

        return credit(self.rankers)

    @property
    def propensity(self) -> float | None:
        """The smallest known probability that a named document was shown (None: not recorded)."""
        known = [p for p in self.propensities if p is not None]
        return min(known) if known else None


@dataclass
class HarvestResult:
    training_set: TrainingSet
    report: HarvestReport
    query_info: dict[str, dict[str, Any]]  # query id -> {"timestamp": first seen, "session": ...}
    feedback: list[RetrievalFeedback] = field(default_factory=list)  # per retrieval with a signal, in read order

    def split(self, by: Literal["time", "session"] = "time", fraction: float = 0.2) -> tuple[TrainingSet, TrainingSet]:
        """Hold out the newest queries (``time``) or whole sessions (``session``): held-out queries are new."""
        ids = self.training_set.query_ids
        if len(ids) < 2:
            raise ValueError("need at least 2 harvested queries to split")

        def timestamp(q: str) -> str:
            return self.query_info.get(q, {}).get("timestamp") or ""

        def session(q: str) -> str:
            return str(self.query_info.get(q, {}).get("session"))

        if by == "time":
            ordered = sorted(ids, key=lambda q: (timestamp(q), q))
            n_held = max(1, round(len(ordered) * fraction))
            held = set(ordered[-n_held:])
        elif by == "session":
            sessions = sorted({session(q) for q in ids})
            if len(sessions) < 2:
                raise ValueError("all harvested queries come from one session: split by time instead")
            first_seen = {s: min(timestamp(q) for q in ids if session(q) == s) for s in sessions}
            sessions.sort(key=lambda s: first_seen[s])
            n_held = max(1, round(len(sessions) * fraction))
            held_sessions = set(sessions[-n_held:])
            held = {q for q in ids if session(q) in held_sessions}
        else:
            raise ValueError(f"split by 'time' or 'session', got {by!r}")
        ts = self.training_set
        return (
            ts.subset([q for q in ids if q not in held], f"{ts.name} (train)"),
            ts.subset([q for q in ids if q in held], f"{ts.name} (held out, newest by {by})"),
        )

"""Which signals make positive pairs and which make hard negatives, and how one signal is applied."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from adapter_retrievers.data import ReadReport
from adapter_retrievers.harvest.records import LoggedDocument, Parsed, Signal


@dataclass
class SignalPolicy:
    """Which signals make positives and which make hard negatives.

    - ``label`` per document: ``value >= label_threshold`` is a positive, below is a hard negative.
    - ``citation`` and ``click`` on a document: positive.
    - answer-level ``feedback`` (a thumbs up/down on the answer, the trace or the retrieval span: it names no
      document, so it is not a pair by itself): at or above ``feedback_threshold`` the top ``feedback_top_k``
      retrieved documents become positives, unless a citation, click or positive label on the same
      retrieval names the useful documents, in which case those are the positives and the thumbs up adds
      nothing; below it (thumbs down) the top ``feedback_top_k`` become hard negatives when
      ``negative_feedback_as_negatives`` (except documents a signal marked positive). ``feedback_top_k=0``
      ignores answer feedback. The report counts each use.
    - ``feedback_keys``: names of feedback/score records that count as answer feedback (LangSmith
      ``key``, Langfuse/Phoenix ``name``); ``label_keys``: names that are per-document relevance labels.
    """

    feedback_threshold: float = 0.5
    feedback_top_k: int = 1
    negative_feedback_as_negatives: bool = True
    label_threshold: float = 0.5
    use_citations: bool = True
    use_clicks: bool = True
    feedback_keys: tuple[str, ...] = ("user_feedback", "feedback", "thumbs", "user_score", "correctness", "helpful")
    label_keys: tuple[str, ...] = ("relevance", "document_relevance", "relevant", "retrieval_relevance")


def named_signal(
    target: str, name: str, value: float, doc_id: str | None, policy: SignalPolicy, report: ReadReport, where: str
) -> Parsed:
    """A named feedback/score record (LangSmith ``key``, Langfuse ``name``) as a signal, per the policy."""
    if name in policy.label_keys and doc_id is not None:
        yield Signal(target, "label", value, document_id=doc_id)
    elif name in policy.feedback_keys:
        yield Signal(target, "feedback", value)
    elif name in ("citation", "click") and doc_id is not None:
        yield Signal(target, name, value, document_id=doc_id)
    else:
        report.skip(f"feedback or score {name!r} is not configured as a signal", where)


# (corpus id or None, position, logged id) for each document of a retrieval
JoinedDocument = tuple[str | None, int, str | None]


def apply_signal(
    signal: Signal,
    rid: str,
    docs: tuple[JoinedDocument, ...],
    policy: SignalPolicy,
    positives: dict[str, dict[str, float]],
    negatives: dict[str, set[str]],
    read: ReadReport,
    match: Callable[[LoggedDocument], str | None],
    merged: ReadReport | None = None,
) -> str | None:
    """Turn one signal on one retrieval into positive and negative corpus ids.

    A signal that confirms a positive already recorded for the retrieval is counted in ``merged``.
    Answer feedback must come after the retrieval's document-level signals (``harvest`` orders them so);
    for it the return value says how it was used: ``"top_k"`` or ``"named"`` (documents named by other
    signals took its place).
    """

    def add_positive(doc_id: str, grade: float) -> None:
        if doc_id in positives[rid] and merged is not None:
            merged.skip("signal for a pair already recorded (merged)", rid)
        positives[rid][doc_id] = max(positives[rid].get(doc_id, 0.0), grade)

    def resolve() -> str | None:
        for corpus_id, position, logged_id in docs:
            if (signal.document_id is not None and signal.document_id in (logged_id, corpus_id)) or (
                signal.document_position is not None and signal.document_position == position
            ):
                return corpus_id
        if signal.document_id is not None:  # cited/clicked but not among the logged documents
            return match(LoggedDocument(signal.document_id, None, None, -1))
        return None

    value = signal.value if signal.value is not None else 1.0
    if signal.kind == "feedback":
        if value >= policy.feedback_threshold and positives[rid]:
            return "named"
        top = sorted(docs, key=lambda d: d[1])[: policy.feedback_top_k]
        if any(corpus_id is None for corpus_id, _, _ in top):
            read.skip("unknown document (not in the corpus)", rid)
        ids = [corpus_id for corpus_id, _, _ in top if corpus_id is not None]
        if value >= policy.feedback_threshold:
            for doc_id in ids:
                add_positive(doc_id, 1.0)
        elif policy.negative_feedback_as_negatives:
            negatives[rid].update(doc_id for doc_id in ids if doc_id not in positives[rid])
        return "top_k"
    if (signal.kind == "citation" and not policy.use_citations) or (signal.kind == "click" and not policy.use_clicks):
        read.skip(f"{signal.kind} signal (turned off in the policy)", rid)
        return None
    doc_id = resolve()
    if doc_id is None:
        read.skip("unknown document (not in the corpus)", rid)
        return None
    if signal.kind in ("citation", "click") or value >= policy.label_threshold:
        add_positive(doc_id, 1.0 if signal.kind != "label" else value)
    else:
        negatives[rid].add(doc_id)
    return None

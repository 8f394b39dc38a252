"""Retrieval metrics over exact search, base vs adapted side by side, with paired bootstrap intervals.

Metrics follow trec_eval's definitions (cross-checked against ``pytrec_eval`` in the tests):
``ndcg@k`` (graded gains, log2 discount), ``recall@k``, ``mrr@k``, ``hit_rate@k`` and ``map@k``
(average precision over the top k, divided by all relevant documents).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from adapter_retrievers._files import atomic_write_text
from adapter_retrievers.data import Corpus, TrainingSet, normalize_rows

DEFAULT_METRICS = ("ndcg@10", "recall@10", "mrr@10", "hit_rate@10", "map@100")


def exact_search(
    query_vectors: np.ndarray, doc_vectors: np.ndarray, k: int, cosine: bool = True, batch_size: int = 256
) -> np.ndarray:
    """Indices of the top ``k`` documents for each query, best first (cosine or dot product)."""
    q = np.asarray(query_vectors, dtype=np.float32)
    d = np.asarray(doc_vectors, dtype=np.float32)
    if cosine:
        q, d = normalize_rows(q), normalize_rows(d)
    k = min(k, d.shape[0])
    out = np.empty((q.shape[0], k), dtype=np.int64)
    for start in range(0, q.shape[0], batch_size):
        scores = q[start : start + batch_size] @ d.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        out[start : start + batch_size] = np.take_along_axis(top, order, axis=1)
    return out


def _parse_metric(name: str) -> tuple[str, int]:
    try:
        base, k = name.split("@")
        return base, int(k)
    except ValueError:
        raise ValueError(f"metric names look like 'ndcg@10', got {name!r}") from None


def ranking_metrics(
    rankings: Sequence[Sequence[str]], qrels: Sequence[Mapping[str, float]], metrics: Sequence[str] = DEFAULT_METRICS
) -> dict[str, np.ndarray]:
    """Per-query values of each metric, for ranked doc-id lists against graded judgements."""
    ranks, grades = [], []
    for ranking, judged in zip(rankings, qrels):
        relevant = {d: g for d, g in judged.items() if g > 0}
        position = {d: i for i, d in reversed(list(enumerate(ranking)))}  # first occurrence counts
        ranks.append(np.array([position.get(d, np.inf) for d in relevant], dtype=np.float64))
        grades.append(np.array(list(relevant.values()), dtype=np.float64))
    return metrics_from_ranks(ranks, grades, metrics)


def metrics_from_ranks(
    ranks: Sequence[np.ndarray], grades: Sequence[np.ndarray], metrics: Sequence[str] = DEFAULT_METRICS
) -> dict[str, np.ndarray]:
    """Per-query metrics from the 0-based ranks of each query's relevant documents (``inf``: not ranked).

    Every metric here depends only on where the relevant documents landed, so exact search needs no
    sorted top-k list: counting the documents that score above each relevant one is enough.
    """
    parsed = [_parse_metric(m) for m in metrics]
    unknown = {b for b, _ in parsed} - {"ndcg", "recall", "mrr", "hit_rate", "map", "precision"}
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}")
    n_queries = len(ranks)
    out = {m: np.zeros(n_queries) for m in metrics}
    counts = np.array([len(r) for r in ranks], dtype=np.int64)
    if not counts.sum():
        return out
    # one flat row per (query, relevant document), each query's rows in rank order (vectorised: this runs
    # once per epoch and blend factor while training)
    owner = np.repeat(np.arange(n_queries), counts)
    rank = np.concatenate(ranks).astype(np.float64)
    grade = np.concatenate(grades).astype(np.float64)
    order = np.lexsort((rank, owner))
    rank, grade = rank[order], grade[order]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    position = np.arange(len(rank)) - np.repeat(starts, counts)  # 0-based place among the query's documents
    ideal = grade[np.lexsort((-grade, owner))]  # each query's grades, best first
    has = counts > 0

    def per_query(values: np.ndarray) -> np.ndarray:
        return np.bincount(owner, weights=values, minlength=n_queries)

    for name, (base, k) in zip(metrics, parsed):
        hit = rank < k
        n_hits = per_query(hit.astype(np.float64))
        if base == "ndcg":
            dcg = per_query(np.where(hit, grade / np.log2(np.where(hit, rank, 0) + 2), 0.0))
            idcg = per_query(np.where(position < k, ideal / np.log2(position + 2), 0.0))
            value = np.divide(dcg, idcg, out=np.zeros(n_queries), where=idcg > 0)
        elif base == "recall":
            value = n_hits / np.maximum(counts, 1)
        elif base == "precision":
            value = n_hits / k
        elif base == "hit_rate":
            value = (n_hits > 0).astype(np.float64)
        elif base == "mrr":
            first = np.full(n_queries, np.inf)
            first[has] = rank[starts[has]]
            value = np.where(first < k, 1.0 / (np.where(first < k, first, 0) + 1), 0.0)
        else:  # map: precision at each relevant hit, over all relevant documents
            cumulative = np.cumsum(hit)
            before = np.concatenate([[0], cumulative])[starts]
            nth_hit = cumulative - np.repeat(before, counts)
            value = per_query(np.where(hit, nth_hit / (np.where(hit, rank, 0) + 1), 0.0)) / np.maximum(counts, 1)
        out[name] = np.where(has, value, 0.0)
    return out


@dataclass
class RetrievalScores:
    """Per-query metric values of one system (base model, or base model plus adapter)."""

    query_ids: list[str]
    per_query: dict[str, np.ndarray]

    def mean(self) -> dict[str, float]:
        return {m: float(v.mean()) if len(v) else 0.0 for m, v in self.per_query.items()}


def score_vectors(
    query_vectors: np.ndarray,
    queries: TrainingSet,
    corpus: Corpus,
    metrics: Sequence[str] = DEFAULT_METRICS,
    cosine: bool = True,
    batch_size: int = 256,
) -> RetrievalScores:
    """Search the whole corpus exactly with ``query_vectors`` (rows in ``queries`` order) and score.

    Ties in score are broken by corpus order, as a stable sort would.
    """
    if corpus.embeddings is None:
        raise ValueError("the corpus has no embeddings: embed it first (corpus.with_embeddings(...))")
    docs = corpus.normalized_embeddings() if cosine else np.asarray(corpus.embeddings, dtype=np.float32)
    q = np.asarray(query_vectors, dtype=np.float32)
    if cosine:
        q = normalize_rows(q)
    (per_query,) = rank_metrics(queries, corpus, lambda start, stop: [q[start:stop] @ docs.T], metrics, batch_size)
    return RetrievalScores(list(queries.query_ids), per_query)


def _relevant_pairs(queries: TrainingSet, corpus: Corpus) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One row per (query, relevant document): its query's row, the document's corpus position, its grade,
    and where each query's rows start and end (``bounds``)."""
    owner, position, grade = [], [], []
    for row, query_id in enumerate(queries.query_ids):
        for doc_id, g in queries.relevant[query_id].items():
            if g > 0:
                owner.append(row)
                position.append(corpus.position(doc_id))
                grade.append(g)
    owner_arr, position_arr = np.array(owner, dtype=np.int64), np.array(position, dtype=np.int64)
    bounds = np.searchsorted(owner_arr, np.arange(len(queries.query_ids) + 1))
    return owner_arr, position_arr, np.array(grade, dtype=np.float64), bounds


def blend_metrics(
    queries: TrainingSet,
    corpus: Corpus,
    adapted: Callable[[int, int], np.ndarray],
    base: Callable[[int, int], np.ndarray],
    alphas: Sequence[float],
    metrics: Sequence[str],
    batch_size: int = 256,
) -> dict[float, dict[str, np.ndarray]]:
    """Per-query metrics of every blend ``alpha * adapted + (1 - alpha) * base`` of two systems' scores.

    A document outranks a relevant one under a blend when ``alpha * da + (1 - alpha) * db > 0`` (``da``,
    ``db``: its score minus the relevant document's in each system). A document below the relevant one in
    both systems is below it under every blend, so only the few others are weighed per alpha: the blends
    cost little more than one system. Exact ties break by corpus order, as a stable sort would.
    """
    owner, position, grades, bounds = _relevant_pairs(queries, corpus)
    n_queries = len(queries.query_ids)
    ranks = {alpha: np.empty(len(owner), dtype=np.float64) for alpha in alphas}
    for start in range(0, n_queries, batch_size):
        stop = min(start + batch_size, n_queries)
        lo, hi = bounds[start], bounds[stop]
        if lo == hi:
            continue
        rows, where = owner[lo:hi] - start, position[lo:hi]
        a, b = adapted(start, stop), base(start, stop)
        own_a, own_b = a[rows, where], b[rows, where]
        # a document below every relevant one of its query in both systems is below them under every blend:
        # find the rest in one pass against each query's lowest relevant score, then pair them with the query's
        # relevant documents (x >= own exactly when x - own >= 0: a float difference is zero only between equals)
        first = bounds[start:stop] - lo  # each query's first pair in this batch
        counts = np.diff(bounds[start : stop + 1])
        has = counts > 0
        low_a = np.full(stop - start, np.inf, dtype=a.dtype)
        low_b = np.full(stop - start, np.inf, dtype=b.dtype)
        low_a[has] = np.minimum.reduceat(own_a, first[has])
        low_b[has] = np.minimum.reduceat(own_b, first[has])
        flat = np.flatnonzero((a >= low_a[:, None]) | (b >= low_b[:, None]))
        hit_query, hit_col = np.divmod(flat, a.shape[1])
        if (counts != 1).any():  # a query with several relevant documents: its hits count for each of them
            per_hit = counts[hit_query]
            repeat = np.repeat(np.arange(len(flat)), per_hit)
            offset = np.arange(len(repeat)) - np.repeat(np.cumsum(per_hit) - per_hit, per_hit)
            hit_pair = first[hit_query][repeat] + offset
            hit_query, hit_col = hit_query[repeat], hit_col[repeat]
        else:
            hit_pair = hit_query
        hda = a[hit_query, hit_col] - own_a[hit_pair]
        hdb = b[hit_query, hit_col] - own_b[hit_pair]
        earlier = hit_col < where[hit_pair]
        for alpha in alphas:
            value = hda if alpha == 1.0 else alpha * hda + (1 - alpha) * hdb
            counted = (value > 0) | ((value == 0) & earlier)
            ranks[alpha][lo:hi] = np.bincount(hit_pair[counted], minlength=hi - lo)
    per_query_grades = [grades[bounds[i] : bounds[i + 1]] for i in range(n_queries)]
    return {
        alpha: metrics_from_ranks(
            [rank[bounds[i] : bounds[i + 1]] for i in range(n_queries)], per_query_grades, metrics
        )
        for alpha, rank in ranks.items()
    }


def rank_metrics(
    queries: TrainingSet,
    corpus: Corpus,
    scores: Callable[[int, int], Sequence[np.ndarray]],
    metrics: Sequence[str] = DEFAULT_METRICS,
    batch_size: int = 256,
) -> list[dict[str, np.ndarray]]:
    """Per-query metrics of one or more systems, from their scores over the whole corpus.

    ``scores(start, stop)`` returns one ``(stop - start, len(corpus))`` matrix per system for the queries
    ``start:stop`` (``queries`` order); it is called batch by batch, so no system's full matrix is held.
    Several systems share one call when their scores share work (the trainer's blend factors are
    mixtures of two matrices). Ties are broken by corpus order, as a stable sort would.
    """
    owner_arr, position_arr, grades, bounds = _relevant_pairs(queries, corpus)
    n_queries = len(queries.query_ids)
    ranks: list[np.ndarray] = []
    columns = np.arange(len(corpus))
    for start in range(0, n_queries, batch_size):
        stop = min(start + batch_size, n_queries)
        first, last = bounds[start], bounds[stop]
        for system, matrix in enumerate(scores(start, stop)):  # once per query, however many relevant documents
            if system == len(ranks):
                ranks.append(np.empty(len(owner_arr), dtype=np.float64))
            for lo in range(first, last, batch_size):
                hi = min(lo + batch_size, last)
                mine, where = matrix[owner_arr[lo:hi] - start], position_arr[lo:hi]
                own = mine[np.arange(hi - lo), where][:, None]
                rank = (mine > own).sum(axis=1)
                equal = mine == own
                tied = np.flatnonzero(equal.sum(axis=1) > 1)  # rows where another document ties: rare
                if len(tied):
                    rank[tied] += (equal[tied] & (columns[None, :] < where[tied, None])).sum(axis=1)
                ranks[system][lo:hi] = rank
    per_query_grades = [grades[bounds[i] : bounds[i + 1]] for i in range(n_queries)]
    if not ranks:  # no queries: one empty result per system is unknowable, so ask for one batch's count
        ranks = [np.empty(0)] * len(scores(0, 0))
    return [
        metrics_from_ranks([rank[bounds[i] : bounds[i + 1]] for i in range(n_queries)], per_query_grades, metrics)
        for rank in ranks
    ]


def paired_bootstrap(
    base: np.ndarray, adapted: np.ndarray, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Confidence interval of the mean gain ``adapted - base``, resampling queries with replacement."""
    diff = np.asarray(adapted, dtype=np.float64) - np.asarray(base, dtype=np.float64)
    if len(diff) == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n_resamples, len(diff)))].mean(axis=1)
    alpha = (1.0 - confidence) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


GROUPS = ("seen", "new")
GROUP_LABELS = {None: "all queries", "seen": "seen documents", "new": "new documents"}


def document_groups(queries: TrainingSet, seen_documents: Collection[str]) -> dict[str, str]:
    """``query_id -> "seen" | "new"``: seen when any of the query's relevant documents is in ``seen_documents``.

    An adapter gains in two ways: it learns which documents past queries wanted (only helps queries
    about those documents) and how this application's users ask (carries over to new documents).
    Splitting held-out queries this way shows which of the two a gain is made of.
    """
    seen = set(seen_documents)
    return {q: "seen" if any(d in seen for d in queries.relevant[q]) else "new" for q in queries.query_ids}


@dataclass
class Comparison:
    """Base model vs adapted on the same queries, with what they were measured on.

    With ``groups`` (from ``compare(..., seen_documents=...)``) every figure is also given for the
    held-out queries about documents seen in training and for those about new documents.
    """

    baseline: RetrievalScores
    adapted: RetrievalScores
    dataset: str
    model: str
    n_documents: int
    adapter_kind: str = "adapter"
    confidence: float = 0.95
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    groups: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if not self.intervals:
            self.intervals = {m: self.interval(m) for m in self.baseline.per_query}
        if self.groups is not None:
            missing = [q for q in self.baseline.query_ids if q not in self.groups]
            if missing:
                raise ValueError(f"groups name no group for queries {missing[:5]}")
            unknown = set(self.groups.values()) - set(GROUPS)
            if unknown:
                raise ValueError(f"unknown groups {sorted(unknown)}; use {GROUPS}")

    @property
    def n_queries(self) -> int:
        return len(self.baseline.query_ids)

    @property
    def has_groups(self) -> bool:
        return self.groups is not None

    def _mask(self, group: str | None) -> np.ndarray:
        if group is None:
            return np.ones(self.n_queries, dtype=bool)
        if group not in GROUPS:
            raise ValueError(f"group must be None, 'seen' or 'new', got {group!r}")
        if self.groups is None:
            raise ValueError("this comparison has no seen/new groups: pass seen_documents to compare()")
        return np.array([self.groups[q] == group for q in self.baseline.query_ids], dtype=bool)

    def n_queries_in(self, group: str | None = None) -> int:
        """Number of queries in ``group`` (None: all)."""
        return int(self._mask(group).sum())

    def means(self, metric: str = "ndcg@10", group: str | None = None) -> tuple[float, float]:
        """``(base, adapted)`` mean of ``metric`` over the queries in ``group`` (nan when it is empty)."""
        mask = self._mask(group)
        if not mask.any():
            return float("nan"), float("nan")
        return float(self.baseline.per_query[metric][mask].mean()), float(self.adapted.per_query[metric][mask].mean())

    def gain(self, metric: str = "ndcg@10", group: str | None = None) -> float:
        """Adapted minus base mean of ``metric`` on ``group`` (None: all queries; nan when the group is empty)."""
        base, adapted = self.means(metric, group)
        return adapted - base

    def interval(self, metric: str = "ndcg@10", group: str | None = None) -> tuple[float, float]:
        """Paired-bootstrap ``confidence`` interval of the gain on ``group``."""
        if group is None and metric in self.intervals:
            return self.intervals[metric]
        mask = self._mask(group)
        return paired_bootstrap(
            self.baseline.per_query[metric][mask], self.adapted.per_query[metric][mask], confidence=self.confidence
        )

    def group_table(self, metric: str = "ndcg@10") -> str:
        """One row each for all, seen-document and new-document queries: count, base, adapted, gain, CI."""
        pct = int(self.confidence * 100)
        header = f"{metric + ' on':<16} {'queries':>7} {'base':>8} {self.adapter_kind[:10]:>10} {'gain':>8}   {pct}% CI"
        lines = [header, "-" * len(header)]
        for group in (None, *GROUPS):
            n = self.n_queries_in(group)
            if n == 0:
                lines.append(f"{GROUP_LABELS[group]:<16} {0:>7} {'-':>8} {'-':>10} {'-':>8}")
                continue
            base, adapted = self.means(metric, group)
            lo, hi = self.interval(metric, group)
            lines.append(
                f"{GROUP_LABELS[group]:<16} {n:>7} {base:>8.4f} {adapted:>10.4f} {adapted - base:>+8.4f}"
                f"   [{lo:+.4f}, {hi:+.4f}]"
            )
        return "\n".join(lines)

    def table(self) -> str:
        base, adapted = self.baseline.mean(), self.adapted.mean()
        pct = int(self.confidence * 100)
        header = f"{'metric':<12} {'base':>8} {self.adapter_kind[:10]:>10} {'gain':>8}   {pct}% CI of gain"
        lines = [header, "-" * len(header)]
        for m in base:
            lo, hi = self.intervals[m]
            lines.append(
                f"{m:<12} {base[m]:>8.4f} {adapted[m]:>10.4f} {adapted[m] - base[m]:>+8.4f}   [{lo:+.4f}, {hi:+.4f}]"
            )
        if self.groups is not None:
            metric = "ndcg@10" if "ndcg@10" in base else next(iter(base))
            lines += ["", self.group_table(metric)]
        return "\n".join(lines)

    def __str__(self) -> str:
        groups = ""
        if self.groups is not None:
            groups = (
                f" ({self.n_queries_in('seen')} about documents seen in training, "
                f"{self.n_queries_in('new')} about new documents)"
            )
        return (
            f"{self.dataset}: {self.n_queries} queries{groups} against {self.n_documents} documents, "
            f"base model {self.model}\n{self.table()}"
        )

    def group_summary(self) -> dict[str, dict[str, Any]]:
        """Per group (``all``, ``seen``, ``new``): count, base, adapted and gain CI of every metric."""
        out: dict[str, dict[str, Any]] = {}
        for group in (None, *GROUPS):
            n = self.n_queries_in(group)
            entry: dict[str, Any] = {"n_queries": n}
            if n:
                entry["baseline"] = {m: self.means(m, group)[0] for m in self.baseline.per_query}
                entry["adapted"] = {m: self.means(m, group)[1] for m in self.baseline.per_query}
                entry["gain_intervals"] = {m: list(self.interval(m, group)) for m in self.baseline.per_query}
            out[group or "all"] = entry
        return out

    def to_dict(self) -> dict[str, Any]:
        out = {
            "dataset": self.dataset,
            "model": self.model,
            "n_queries": self.n_queries,
            "n_documents": self.n_documents,
            "adapter_kind": self.adapter_kind,
            "baseline": self.baseline.mean(),
            "adapted": self.adapted.mean(),
            "confidence": self.confidence,
            "gain_intervals": {m: list(v) for m, v in self.intervals.items()},
        }
        if self.groups is not None:
            out["groups"] = self.group_summary()
        out["per_query"] = {
            q: {
                "baseline": {m: float(v[i]) for m, v in self.baseline.per_query.items()},
                "adapted": {m: float(v[i]) for m, v in self.adapted.per_query.items()},
                **({"group": self.groups[q]} if self.groups is not None else {}),
            }
            for i, q in enumerate(self.baseline.query_ids)
        }
        return out

    def save_json(self, path: os.PathLike | str, overwrite: bool = False) -> None:
        """The full report (per query) as JSON; an existing file is replaced only with ``overwrite=True``."""
        from adapter_retrievers.outputs import check_output

        check_output(path, overwrite)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


def compare(
    adapter: Any,
    query_vectors: np.ndarray,
    queries: TrainingSet,
    corpus: Corpus,
    metrics: Sequence[str] = DEFAULT_METRICS,
    seen_documents: Collection[str] | None = None,
    baseline: Any = None,
) -> Comparison:
    """Score the base query vectors and the adapted ones on the same queries and corpus.

    ``seen_documents`` (e.g. ``TrainingResult.training_documents``, the training positives) splits the
    report into queries about documents seen in training and queries about new documents. ``baseline``: an
    adapter the base vectors go through first (a migration's least-squares map: raw vectors of another model
    cannot search this corpus).
    """
    cosine = bool(getattr(adapter, "normalize", True))
    base_vectors = query_vectors if baseline is None else baseline.transform(query_vectors)
    baseline = score_vectors(base_vectors, queries, corpus, metrics, cosine=cosine)
    adapted = score_vectors(adapter.transform(query_vectors), queries, corpus, metrics, cosine=cosine)
    return Comparison(
        baseline,
        adapted,
        queries.name,
        getattr(adapter, "base_model", "?"),
        len(corpus),
        getattr(adapter, "kind", "adapter"),
        groups=None if seen_documents is None else document_groups(queries, seen_documents),
    )


def evaluate_adapter(
    adapter: Any,
    queries: TrainingSet,
    corpus: Corpus,
    encoder: Any,
    metrics: Sequence[str] = DEFAULT_METRICS,
    seen_documents: Collection[str] | None = None,
) -> Comparison:
    """Embed ``queries`` (and the corpus if needed) with ``encoder`` and compare base vs adapted.

    ``seen_documents`` as in :func:`compare`.
    """
    from adapter_retrievers.encoders import as_encoder

    enc = as_encoder(encoder)
    if corpus.embeddings is None:
        corpus = corpus.with_embeddings(enc.embed_documents(corpus.texts))
    vectors = enc.embed_queries([queries.queries[q] for q in queries.query_ids])
    return compare(adapter, vectors, queries, corpus, metrics, seen_documents)

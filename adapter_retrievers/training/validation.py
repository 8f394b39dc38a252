"""Validation: how queries are held out (a split, or folds grouped by document) and how candidates are scored."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from adapter_retrievers.adapters import QueryAdapter, blend
from adapter_retrievers.data import Corpus, TrainingSet
from adapter_retrievers.evaluation import blend_metrics, document_groups, score_vectors
from adapter_retrievers.training.config import BLENDABLE, TrainingConfig

_CACHED_SCORES = 1 << 24  # validation x corpus scores kept across epochs up to this many (64 MB of float32)


class ValidationScorer:
    """Per-query selection metric of candidates on one validation set; knows which queries are about new docs.

    ``start``: what "no adapter" means here (None: the base vectors; a migration adapter's least-squares start,
    when the query vectors come from another model than the corpus's).
    """

    def __init__(
        self,
        queries: TrainingSet,
        vectors: np.ndarray,
        corpus: Corpus,
        metric: str,
        seen: set[str],
        start: QueryAdapter | None = None,
    ) -> None:
        self.queries, self.vectors, self.corpus, self.metric = queries, vectors, corpus, metric
        self.start = start
        groups = document_groups(queries, seen)
        self.new = np.array([groups[q] == "new" for q in queries.query_ids], dtype=bool)
        self.base = self(None)
        docs = corpus.normalized_embeddings()
        x = np.asarray(vectors, dtype=np.float32)
        # the same for every candidate: kept when small (computed here, as threads may share the scorer)
        small = x.shape[0] * docs.shape[0] <= _CACHED_SCORES and start is None
        self._base_scores = x @ docs.T if small else None

    def __call__(self, adapter: QueryAdapter | None) -> np.ndarray:
        adapter = self.start if adapter is None else adapter
        vectors = self.vectors if adapter is None else adapter.transform(self.vectors)
        return score_vectors(vectors, self.queries, self.corpus, (self.metric,)).per_query[self.metric]

    def blends(self, adapter: QueryAdapter, alphas: Sequence[float]) -> dict[float, np.ndarray]:
        """Per-query scores of ``blend(adapter, alpha)`` for each alpha, from two matrix products in all.

        Before its final normalisation a blended adapter maps ``x`` to ``alpha * f(x) + (1 - alpha) * x``
        (see :func:`blend`), and cosine ranking ignores the query's length, so every blend factor ranks by
        ``alpha * (f(x) . d) + (1 - alpha) * (x . d)``.
        """
        if list(alphas) == [1.0] or adapter.kind not in BLENDABLE:
            return {alpha: self(blend(adapter, alpha)) for alpha in alphas}
        docs = self.corpus.normalized_embeddings()
        x = np.asarray(self.vectors, dtype=np.float32)
        mapped = adapter._apply(x)  # f(x), not yet normalised

        def adapted(start: int, stop: int) -> np.ndarray:
            return mapped[start:stop] @ docs.T

        def base(start: int, stop: int) -> np.ndarray:
            return x[start:stop] @ docs.T if self._base_scores is None else self._base_scores[start:stop]

        per_alpha = blend_metrics(self.queries, self.corpus, adapted, base, alphas, (self.metric,))
        return {alpha: per_alpha[alpha][self.metric] for alpha in alphas}


def validation_split(train: TrainingSet, cfg: TrainingConfig) -> tuple[TrainingSet, TrainingSet]:
    """``(train, validation)`` held out by ``cfg.validation_split`` and ``cfg.validation_fraction``."""
    source = train.name
    if cfg.validation_split == "both":
        half = cfg.validation_fraction / 2
        rest, new = train.split(half, seed=cfg.seed, by="document")
        rest, seen = rest.split(half / (1 - half), seed=cfg.seed, by="query")
        validation = TrainingSet(
            {**new.queries, **seen.queries},
            {**new.relevant, **seen.relevant},
            {**new.negatives, **seen.negatives},
        )
        label = "grouped by document + by query"
    else:
        rest, validation = train.split(cfg.validation_fraction, seed=cfg.seed, by=cfg.validation_split)
        label = f"by {cfg.validation_split}"
    rest.name, validation.name = source, f"{source}, validation split {label}"
    return rest, validation


def cross_validation_folds(train: TrainingSet, cfg: TrainingConfig) -> list[TrainingSet]:
    """``cfg.cv_folds`` folds grouped by document (by query when there are fewer document groups than folds)."""
    try:
        return train.folds(cfg.cv_folds, seed=cfg.seed, by="document")
    except ValueError:  # fewer document groups than folds: fall back to folds by query
        return train.folds(min(cfg.cv_folds, len(train)), seed=cfg.seed, by="query")


def validation_folds(train: TrainingSet, cfg: TrainingConfig) -> list[TrainingSet]:
    """``cfg.validation_folds`` disjoint folds held out as ``cfg.validation_split`` says.

    ``"both"``: half of the queries in whole document groups, spread over the folds by group (queries about
    documents no other fold trains on: "new"), the other half spread by query (mostly "seen" wherever
    documents have several queries), so every fold validates both what carries over to new documents and
    what the adapter learned about documents with traffic.
    """
    k = cfg.validation_folds
    if cfg.validation_split != "both":
        return train.folds(k, seed=cfg.seed, by=cfg.validation_split)
    by_document, by_query = train.split(0.5, seed=cfg.seed, by="document")
    parts = zip(by_document.folds(k, seed=cfg.seed, by="document"), by_query.folds(k, seed=cfg.seed, by="query"))
    folds = []
    for i, (new, seen) in enumerate(parts):
        fold = TrainingSet(
            {**new.queries, **seen.queries}, {**new.relevant, **seen.relevant}, {**new.negatives, **seen.negatives}
        )
        fold.name = f"{train.name} (fold {i + 1}/{k})"
        folds.append(fold)
    return folds


def check_disjoint(train: TrainingSet, validation: TrainingSet) -> None:
    overlap = set(train.queries) & set(validation.queries)
    if overlap:
        raise ValueError(f"{len(overlap)} queries are in both train and validation, e.g. {sorted(overlap)[:3]}")

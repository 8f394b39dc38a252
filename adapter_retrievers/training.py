"""The trainer: fits a query-only adapter on (query, relevant document) pairs, with torch.

Embeddings are computed once (documents are read from the corpus when it already has vectors), so
training never calls the embedding model again. The queries are split by query into train and
validation; after every epoch the adapter is scored by nDCG@10 on validation against the whole
corpus, training stops when it stops improving, and the identity (no adapter) is kept as a candidate:
the returned adapter is never worse than the base model on validation.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from adapter_retrievers.adapters import OrthogonalAdapter, QueryAdapter
from adapter_retrievers.data import Corpus, TrainingSet, check_vectors
from adapter_retrievers.evaluation import Comparison, compare, normalize_rows, paired_bootstrap, score_vectors

logger = logging.getLogger(__name__)

Loss = Literal["infonce", "triplet", "mse_cosine"]
LOSSES = ("infonce", "triplet", "mse_cosine")


@dataclass
class TrainingConfig:
    """Everything that decides a training run; saved in the adapter file for provenance.

    Defaults were chosen on held-out SciFact queries (see ``docs/benchmarks.md``).
    ``negatives``: random corpus documents per query and step, or ``"all"`` to score every document
    (the limit case; above ``all_negatives_limit`` documents the trainer falls back to 256 random
    negatives, which came within 0.006 nDCG@10 of "all" on SciFact).
    ``require_significant_gain``: keep the best epoch only if its validation gain over the base model
    is above zero at the ``significance`` level (paired bootstrap over validation queries); otherwise
    return the identity. A gain that validation cannot tell from noise is not worth shipping.
    """

    kind: str = "linear"
    loss: Loss = "infonce"
    negatives: int | Literal["all"] = "all"
    all_negatives_limit: int = 200_000
    in_batch_negatives: bool = True
    labelled_negatives: bool = True
    learning_rate: float = 1e-3
    epochs: int = 100
    batch_size: int = 64
    patience: int = 8
    validation_fraction: float = 0.15
    temperature: float = 0.05
    margin: float = 0.2
    rank: int = 32
    hidden: int = 256
    solver: Literal["gradient", "procrustes"] = "gradient"
    selection_metric: str = "ndcg@10"
    require_significant_gain: bool = True
    significance: float = 0.9
    seed: int = 0

    def __post_init__(self) -> None:
        trainable = [k for k in QueryAdapter.kinds() if k != "identity"]
        if self.kind not in trainable:
            raise ValueError(f"unknown adapter kind {self.kind!r}; choose one of {trainable}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {LOSSES}")
        if self.negatives != "all" and (not isinstance(self.negatives, int) or self.negatives < 0):
            raise ValueError(f"negatives must be a count >= 0 or 'all', got {self.negatives!r}")
        if self.solver == "procrustes" and self.kind != "orthogonal":
            raise ValueError("solver='procrustes' only applies to kind='orthogonal'")
        for name in ("learning_rate", "temperature", "validation_fraction"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")


@dataclass
class TrainingResult:
    """What :meth:`AdapterTrainer.fit` returns: the chosen adapter and how it was chosen."""

    adapter: QueryAdapter
    report: Comparison
    history: list[dict[str, float]]
    best_epoch: int
    train_seconds: float
    n_train_queries: int
    n_validation_queries: int
    config: TrainingConfig = field(repr=False, default_factory=TrainingConfig)

    @property
    def improved(self) -> bool:
        """False when no epoch beat the base model on validation (the adapter is then the identity)."""
        return not self.adapter.is_identity

    def plot_history(self, path: os.PathLike | str) -> None:
        """PNG of training loss and validation metric per epoch."""
        from adapter_retrievers.plots import plot_history

        plot_history(self.history, self.config.selection_metric, path)


class AdapterTrainer:
    """Fit a query adapter.

    >>> trainer = AdapterTrainer(encoder, kind="linear", loss="infonce")   # doctest: +SKIP
    >>> result = trainer.fit(train, corpus)                                  # doctest: +SKIP
    >>> print(result.report); result.adapter.save("adapters/mine")           # doctest: +SKIP

    ``encoder`` is anything :func:`~adapter_retrievers.encoders.as_encoder` accepts; ``cache_dir``
    stores embeddings on disk so a second run never calls the model again. Keyword arguments are
    :class:`TrainingConfig` fields.
    """

    def __init__(
        self,
        encoder: Any = None,
        *,
        model_id: str | None = None,
        cache_dir: os.PathLike | str | None = None,
        progress: bool = True,
        device: str = "cpu",
        **config: Any,
    ) -> None:
        from adapter_retrievers.encoders import CachedEncoder, as_encoder

        self.encoder = None
        if encoder is not None:
            self.encoder = CachedEncoder(encoder, cache_dir, model_id) if cache_dir else as_encoder(encoder, model_id)
        self.model_id = model_id or (self.encoder.model_id if self.encoder is not None else None)
        self.config = TrainingConfig(**config)
        self.progress = progress
        self.device = device

    # ------------------------------------------------------------------------------------ API

    def fit(self, train: TrainingSet, corpus: Corpus, validation: TrainingSet | None = None) -> TrainingResult:
        """Embed what is needed (once), split off validation queries unless given, train, select."""
        if len(train) == 0:
            raise ValueError("the training set is empty: it needs at least 2 queries with a relevant document")
        train = train.check_against(corpus)
        fingerprint = train.fingerprint if validation is None else f"{train.fingerprint}+{validation.fingerprint}"
        if validation is None:
            if len(train) < 2:
                raise ValueError("need at least 2 training queries to hold some out for validation")
            source = train.name
            train, validation = train.split(self.config.validation_fraction, seed=self.config.seed)
            train.name, validation.name = source, f"{source}, validation split"
        else:
            validation = validation.check_against(corpus)
            overlap = set(train.queries) & set(validation.queries)
            if overlap:
                raise ValueError(f"{len(overlap)} queries are in both train and validation, e.g. {sorted(overlap)[:3]}")
        if self.encoder is None:
            raise ValueError("fit() needs an encoder to embed queries; use fit_vectors() with precomputed vectors")
        if corpus.embeddings is None:
            corpus = corpus.with_embeddings(self.encoder.embed_documents(corpus.texts))
        train_vectors = self.encoder.embed_queries([train.queries[q] for q in train.query_ids])
        val_vectors = self.encoder.embed_queries([validation.queries[q] for q in validation.query_ids])
        return self.fit_vectors(train, train_vectors, validation, val_vectors, corpus, data_fingerprint=fingerprint)

    def fit_vectors(
        self,
        train: TrainingSet,
        train_vectors: np.ndarray,
        validation: TrainingSet,
        validation_vectors: np.ndarray,
        corpus: Corpus,
        data_fingerprint: str | None = None,
    ) -> TrainingResult:
        """Train from precomputed query vectors (rows in ``query_ids`` order) and an embedded corpus.

        ``data_fingerprint`` names the data the caller started from (default: train's own).
        """
        cfg = self.config
        if corpus.embeddings is None:
            raise ValueError("corpus has no embeddings: pass corpus.with_embeddings(vectors) or use fit()")
        dim = corpus.embeddings.shape[1]
        train_vectors = check_vectors(train_vectors, "training query vectors", rows=len(train), dimension=dim)
        validation_vectors = check_vectors(
            validation_vectors, "validation query vectors", rows=len(validation), dimension=dim
        )
        if len(train) == 0 or len(validation) == 0:
            raise ValueError(
                "need at least one training and one validation query with a relevant document in the corpus"
            )
        model_id = self.model_id or "unknown-model"
        started = time.perf_counter()

        def validation_scores(adapter: QueryAdapter) -> np.ndarray:
            """Per-query selection metric on validation (kept: the significance gate reuses it)."""
            scores = score_vectors(adapter.transform(validation_vectors), validation, corpus, (cfg.selection_metric,))
            return scores.per_query[cfg.selection_metric]

        identity = QueryAdapter.identity(dim, model_id)
        base_per_query = validation_scores(identity)
        best_adapter, best_per_query, best_epoch = identity, base_per_query, 0
        best_score = float(base_per_query.mean())
        history: list[dict[str, float]] = [{"epoch": 0, "train_loss": float("nan"), cfg.selection_metric: best_score}]
        if cfg.solver == "procrustes":
            candidates = iter([(1, float("nan"), self._procrustes(train, train_vectors, corpus, model_id))])
        else:
            candidates = self._train_epochs(train, train_vectors, corpus, model_id)
        for epoch, loss, candidate in candidates:
            per_query = validation_scores(candidate)
            score = float(per_query.mean())
            history.append({"epoch": epoch, "train_loss": loss, cfg.selection_metric: score})
            if score > best_score + 1e-9:
                best_adapter, best_per_query, best_score, best_epoch = candidate, per_query, score, epoch
            elif epoch - best_epoch >= cfg.patience:
                break
        seconds = time.perf_counter() - started
        rejected = None
        interval = paired_bootstrap(base_per_query, best_per_query, confidence=cfg.significance, seed=cfg.seed)
        if cfg.require_significant_gain and not best_adapter.is_identity and interval[0] <= 0:
            rejected = {"epoch": best_epoch, "score": best_score, "gain_interval": list(interval)}
            logger.info(
                "best epoch %d gains %s on validation: not significant, keeping the base model",
                best_epoch,
                interval,
            )
            best_adapter, best_score, best_epoch = identity, history[0][cfg.selection_metric], 0
        best_adapter.metadata = {
            "training": asdict(cfg),
            "training_data": {
                "fingerprint": data_fingerprint or train.fingerprint,
                "name": train.name,
                "n_queries": len(train),
                "n_pairs": train.n_pairs,
                "corpus_fingerprint": corpus.fingerprint,
                "n_documents": len(corpus),
            },
            "validation": {
                "n_queries": len(validation),
                "baseline": history[0][cfg.selection_metric],
                "adapted": best_score,
                "metric": cfg.selection_metric,
                "best_epoch": best_epoch,
                "gain_interval": list(interval),
                "rejected_not_significant": rejected,
            },
            "train_seconds": round(seconds, 3),
        }
        report = compare(best_adapter, validation_vectors, validation, corpus)
        return TrainingResult(best_adapter, report, history, best_epoch, seconds, len(train), len(validation), cfg)

    # ------------------------------------------------------------------------------- internals

    def _procrustes(self, train: TrainingSet, vectors: np.ndarray, corpus: Corpus, model_id: str) -> QueryAdapter:
        rows, targets = [], []
        for i, query_id in enumerate(train.query_ids):
            for doc_id in train.relevant[query_id]:
                rows.append(i)
                targets.append(corpus.position(doc_id))
        q = normalize_rows(vectors[rows])
        t = normalize_rows(corpus.embeddings[targets])
        return OrthogonalAdapter.procrustes(q, t, model_id)

    def _train_epochs(self, train: TrainingSet, vectors: np.ndarray, corpus: Corpus, model_id: str):
        """Yield ``(epoch, mean train loss, adapter snapshot)`` after every epoch."""
        import torch

        from adapter_retrievers.torch_adapters import TorchAdapter, pair_loss

        cfg = self.config
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        device = torch.device(self.device)
        start = QueryAdapter.create(
            cfg.kind, vectors.shape[1], model_id, rank=cfg.rank, hidden=cfg.hidden, seed=cfg.seed
        )
        module = TorchAdapter(start).to(device)
        optimizer = torch.optim.Adam(module.parameters(), lr=cfg.learning_rate)

        docs = torch.from_numpy(normalize_rows(corpus.embeddings)).to(device)
        queries = torch.from_numpy(vectors).to(device)
        n_docs = docs.shape[0]
        pair_query, pair_doc = [], []
        positives: list[np.ndarray] = []
        labelled: list[np.ndarray] = []
        for i, query_id in enumerate(train.query_ids):
            positive_rows = np.array([corpus.position(d) for d in train.relevant[query_id]], dtype=np.int64)
            positives.append(positive_rows)
            negative_ids = train.negatives.get(query_id, ()) if cfg.labelled_negatives else ()
            labelled.append(np.array([corpus.position(d) for d in negative_ids], dtype=np.int64))
            pair_query += [i] * len(positive_rows)
            pair_doc += positive_rows.tolist()
        pair_query_arr, pair_doc_arr = np.array(pair_query), np.array(pair_doc)
        use_all = cfg.negatives == "all" and n_docs <= cfg.all_negatives_limit
        if cfg.negatives == "all" and not use_all:
            logger.warning("%d documents is too many to score per batch: using 256 random negatives", n_docs)
        n_negatives = 0 if use_all else min(256 if cfg.negatives == "all" else int(cfg.negatives), n_docs - 1)

        bar = _progress(cfg.epochs, self.progress, f"training {cfg.kind} adapter")
        try:
            for epoch in range(1, cfg.epochs + 1):
                order = rng.permutation(len(pair_query_arr))
                losses = []
                module.train()
                for start_row in range(0, len(order), cfg.batch_size):
                    batch = order[start_row : start_row + cfg.batch_size]
                    q_idx, d_idx = pair_query_arr[batch], pair_doc_arr[batch]
                    adapted = module(queries[q_idx])
                    candidates, target, mask = _candidates(
                        q_idx,
                        d_idx,
                        positives,
                        labelled,
                        n_docs,
                        use_all,
                        n_negatives,
                        cfg.in_batch_negatives,
                        rng,
                    )
                    if candidates is None:  # every document is a candidate
                        scores = adapted @ docs.T
                    else:
                        cand = docs[torch.from_numpy(candidates).to(device)]
                        scores = torch.einsum("bd,bmd->bm", adapted, cand)
                    loss = pair_loss(
                        cfg.loss,
                        scores,
                        torch.from_numpy(target).to(device),
                        torch.from_numpy(mask).to(device),
                        temperature=cfg.temperature,
                        margin=cfg.margin,
                    )
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    losses.append(float(loss.detach()))
                mean_loss = float(np.mean(losses))
                if not math.isfinite(mean_loss):
                    logger.warning("training loss became %s at epoch %d; stopping", mean_loss, epoch)
                    return
                bar.update(1)
                bar.set_postfix(loss=f"{mean_loss:.4f}")
                yield epoch, mean_loss, module.export()
        finally:
            bar.close()


def _candidates(
    q_idx: np.ndarray,
    d_idx: np.ndarray,
    positives: Sequence[np.ndarray],
    labelled: Sequence[np.ndarray],
    n_docs: int,
    use_all: bool,
    n_random: int,
    in_batch: bool,
    rng: np.random.Generator,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Candidate documents per pair: returns ``(doc rows or None for all, target column, valid mask)``.

    The target is the pair's positive; the query's other positives are masked out, so a known positive
    is never scored as a negative.
    """
    b = len(q_idx)
    if use_all:
        mask = np.ones((b, n_docs), dtype=bool)
        for row, q in enumerate(q_idx):
            mask[row, positives[q]] = False
            mask[row, d_idx[row]] = True
        return None, d_idx.copy(), mask
    columns = [d_idx[:, None]]
    if n_random:
        random_rows = rng.integers(0, n_docs, size=(b, n_random))
        for row, q in enumerate(q_idx):
            hard = labelled[q]
            if len(hard):  # labelled non-relevant docs take up to half of the random slots
                take = hard[rng.permutation(len(hard))[: max(1, n_random // 2)]]
                random_rows[row, : len(take)] = take
        columns.append(random_rows)
    if in_batch:
        columns.append(np.broadcast_to(d_idx[None, :], (b, b)))
    candidates = np.concatenate(columns, axis=1)
    mask = np.ones(candidates.shape, dtype=bool)
    for row, q in enumerate(q_idx):
        mask[row, 1:] = ~np.isin(candidates[row, 1:], positives[q])
    return candidates, np.zeros(b, dtype=np.int64), mask


def _progress(total: int, enabled: bool, desc: str, unit: str = "epoch") -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit=unit, leave=False)


def learning_curve(
    trainer: AdapterTrainer,
    train: TrainingSet,
    corpus: Corpus,
    test: TrainingSet,
    sizes: Sequence[int],
    seeds: Sequence[int] = (0,),
    test_vectors: np.ndarray | None = None,
    metric: str = "ndcg@10",
    progress: bool = True,
) -> list[dict[str, float]]:
    """Held-out ``metric`` against number of training pairs (the Chroma report's data-size ablation).

    Each size is trained on a random subset of whole queries, once per seed; rows carry the mean and
    the spread over seeds. Plot with :func:`adapter_retrievers.plots.plot_learning_curve`.
    """
    if trainer.encoder is None and test_vectors is None:
        raise ValueError("learning_curve needs a trainer with an encoder, or test_vectors")
    if corpus.embeddings is None:
        corpus = corpus.with_embeddings(trainer.encoder.embed_documents(corpus.texts))
    if test_vectors is None:
        test_vectors = trainer.encoder.embed_queries([test.queries[q] for q in test.query_ids])
    baseline = score_vectors(test_vectors, test, corpus, (metric,)).mean()[metric]
    rows = []
    bar = _progress(len(sizes) * len(seeds), progress, "learning curve", unit="fit")
    for size in sizes:
        values, actual = [], []
        for seed in seeds:
            subset = train.sample_pairs(size, seed=seed)
            bar.update(1)
            if len(subset) < 2:
                continue
            result = trainer.fit(subset, corpus)
            values.append(score_vectors(result.adapter.transform(test_vectors), test, corpus, (metric,)).mean()[metric])
            actual.append(subset.n_pairs)
        if values:
            rows.append(
                {
                    "pairs": float(np.mean(actual)),
                    metric: float(np.mean(values)),
                    "std": float(np.std(values)),
                    "baseline": baseline,
                    "runs": len(values),
                }
            )
    bar.close()
    return rows

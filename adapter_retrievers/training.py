"""The trainer: fits a query-only adapter on (query, relevant document) pairs, with torch.

Embeddings are computed once (documents are read from the corpus when it already has vectors), so
training never calls the embedding model again. Validation queries are held out (by
document, by query, or both: ``validation_split``); after every epoch the adapter is scored by nDCG@10
on validation against the whole corpus, training stops when it stops improving, and the identity (no
adapter) is kept as a candidate: the returned adapter is never worse than the base model on validation,
and, where validation has queries about documents no training query had ("new" documents), never
worse on those either. Small training sets use k-fold cross-validation (folds grouped by document)
instead of one small validation split, then refit on all pairs.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, TypeVar

import numpy as np

from adapter_retrievers.adapters import OrthogonalAdapter, QueryAdapter
from adapter_retrievers.data import Corpus, TrainingSet, check_vectors, documents_fingerprint, normalize_rows
from adapter_retrievers.evaluation import (
    Comparison,
    RetrievalScores,
    compare,
    document_groups,
    paired_bootstrap,
    rank_metrics,
    score_vectors,
)

logger = logging.getLogger(__name__)

Loss = Literal["infonce", "triplet", "mse_cosine"]
LOSSES = ("infonce", "triplet", "mse_cosine")
ValidationSplit = Literal["document", "query", "both"]
Negatives = int | Literal["all"]
T = TypeVar("T")
VALIDATION_SPLITS = ("document", "query", "both")
BLENDABLE = ("linear", "low_rank", "residual_mlp")


@dataclass
class TrainingConfig:
    """Everything that decides a training run; saved in the adapter file for provenance.

    Defaults were chosen on held-out SciFact queries (see ``docs/benchmarks.md``).
    ``negatives``: random corpus documents per query and step, or ``"all"`` to score every document
    (the limit case; above ``all_negatives_limit`` documents the trainer falls back to
    ``fallback_negatives`` random negatives: 256 came within 0.006 nDCG@10 of "all" on SciFact).
    Measured on 100k-1M synthetic documents at d=384 (``benchmarks/corpus_scale.py``): "all" costs
    2-10% more peak memory than 256 random negatives and about the same time per epoch, and training
    peaks at about 3.7x the corpus's float32 size plus 0.5 GB in both modes (6.0 GB for 1M x 384), so
    up to 1M documents "all" is kept. The corpus itself, not the negatives, decides whether a machine has
    enough memory: at d=384 a 24 GiB machine trains on up to about 4M documents either way.
    ``require_significant_gain``: keep the best epoch only if its validation gain over the base model
    is above zero at the ``significance`` level (paired bootstrap over validation queries); otherwise
    return the identity. A gain that validation cannot tell from noise is not worth shipping.
    ``non_inferiority_margin``: when every validation query is about a new document (k-fold folds and
    ``validation_split="document"``), validation cannot see the gain on documents with traffic, the
    largest in every benchmark, only what the adapter costs the others; the gate then keeps the adapter
    when it beat the base model on validation and the interval's lower bound is above minus this margin
    (not worse on new documents, within the margin). ``None``: require a significant gain there too.
    ``validation_split``: how validation queries are held out when none are given: ``"document"``
    (whole groups of queries that share relevant documents: every validation query is about a "new"
    document), ``"query"`` (random queries: mostly "seen" documents), or ``"both"`` (half of
    ``validation_fraction`` each). Whenever validation has queries about new documents, a candidate is
    only selected if it is not below the base model on them (``protect_new_documents``).
    ``cv_below_queries``/``cv_folds``: with fewer training queries than this, select and gate with
    ``cv_folds``-fold cross-validation grouped by document, then refit on all pairs.
    ``refit``: with a validation split held out by the trainer, train the kept adapter again on every
    pair (validation included) for the chosen epochs, negatives and blend, as cross-validation does. On
    by default: the validation queries' documents are then learned too (SciFact, 10 seeds: 0.8023 against
    0.7847 without; new documents +0.0006 against +0.0023). With cores to spare the refit trains in a
    thread beside the selection runs, never ahead of the epoch they have chosen, so on 2 cores it adds
    1-2 s to a SciFact fit instead of a third run's 5-6 s.
    ``result.report`` and ``result.decision`` describe the selected adapter on validation; the refit has
    no held-out query left to score it.
    A tuple of ``negatives`` trains one run per option and keeps the one that validation prefers, under
    the same rules as the epoch and blend. The default ``("all", 5)``: the whole corpus gives the largest
    gain on queries about documents with traffic (SciFact), 5 random negatives learn more of how users
    ask (XQuAD new paragraphs: Spanish +0.104 vs +0.052, German +0.029 vs -0.001); validation picks.
    ``negative_pool="positives"``: draw negatives only from the training positives, so the adapter
    learns to tell the trained documents apart, not to prefer them over the rest of the corpus.
    ``bias``: train the bias term (linear, low_rank, residual_mlp). ``identity_weight``: L2 pull of the
    parameters toward the identity. ``consistency_weight``: keep the base model's rankings for corpus
    documents used as pseudo-queries (``consistency_batch`` per step; KL between base and adapted
    score distributions), so the adapter cannot warp the space toward popular training documents;
    the distributions are over the whole corpus, or over ``consistency_documents`` random documents per
    step when the corpus is larger.
    ``threads``: torch and BLAS threads while training (restored afterwards); ``None`` keeps torch's setting.
    One by default: on SciFact (5,183 documents, d=384) two threads on 2 cores were no faster when the
    machine was idle and 10x slower (113 s vs 11.7 s) while another process used a core, as a nightly
    job beside a serving process would. Raise it for corpora of millions of documents on many cores.
    ``parallel_runs``: how many training runs (one per ``negatives`` option, and with ``refit`` one more)
    train at once, each in its own Python thread with ``threads`` torch threads; ``None``: as many as the
    cores this process may use hold (cores // threads; a third thread on 2 cores was no faster). The runs
    are independent, so the result is the same either way; threads of one process time-share cores
    without spinning as oversubscribed torch threads do.
    ``blend``: also try ``alpha * adapter + (1 - alpha) * identity`` for each alpha (linear kinds) on
    validation and keep the best (ignored for ``orthogonal``).
    """

    kind: str = "linear"
    loss: Loss = "infonce"
    negatives: Negatives | tuple[Negatives, ...] = ("all", 5)
    all_negatives_limit: int = 1_000_000
    fallback_negatives: int = 256
    in_batch_negatives: bool = True
    negative_pool: Literal["corpus", "positives"] = "corpus"
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
    non_inferiority_margin: float | None = 0.01
    refit: bool = True
    validation_split: ValidationSplit = "both"
    protect_new_documents: bool = True
    cv_below_queries: int = 300
    cv_folds: int = 5
    bias: bool = False
    identity_weight: float = 0.0
    consistency_weight: float = 5.0
    consistency_batch: int = 64
    consistency_documents: int = 1024
    threads: int | None = 1
    parallel_runs: int | None = None
    blend: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    seed: int = 0

    def __post_init__(self) -> None:
        trainable = [k for k in QueryAdapter.kinds() if k != "identity"]
        if self.kind not in trainable:
            raise ValueError(f"unknown adapter kind {self.kind!r}; choose one of {trainable}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {LOSSES}")
        if isinstance(self.negatives, list | tuple):
            self.negatives = tuple(self.negatives)
        options = self.negatives if isinstance(self.negatives, tuple) else (self.negatives,)
        if not options or any(n != "all" and (not isinstance(n, int) or isinstance(n, bool) or n < 0) for n in options):
            raise ValueError(f"negatives must be a count >= 0 or 'all' (or a tuple of them), got {self.negatives!r}")
        if self.solver == "procrustes" and self.kind != "orthogonal":
            raise ValueError("solver='procrustes' only applies to kind='orthogonal'")
        for name in ("learning_rate", "temperature", "validation_fraction"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if self.validation_split not in VALIDATION_SPLITS:
            raise ValueError(f"validation_split must be one of {VALIDATION_SPLITS}, got {self.validation_split!r}")
        if self.cv_below_queries and self.cv_folds < 2:
            raise ValueError("cv_folds must be >= 2")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads must be >= 1 or None")
        if self.parallel_runs is not None and self.parallel_runs < 1:
            raise ValueError("parallel_runs must be >= 1 or None")
        if self.non_inferiority_margin is not None and self.non_inferiority_margin < 0:
            raise ValueError("non_inferiority_margin must be >= 0 or None")
        if self.consistency_documents < 2:
            raise ValueError("consistency_documents must be >= 2")
        for name in ("identity_weight", "consistency_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        self.blend = tuple(float(a) for a in self.blend)
        if not self.blend or any(not 0.0 < a <= 1.0 for a in self.blend):
            raise ValueError(f"blend factors must be in (0, 1], got {self.blend}")
        if self.kind not in BLENDABLE:  # a rotation mixed with the identity is no rotation
            self.blend = (1.0,)


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
    training_documents: set[str] = field(repr=False, default_factory=set)
    decision: dict[str, Any] = field(default_factory=dict)

    @property
    def improved(self) -> bool:
        """False when no epoch beat the base model on validation (the adapter is then the identity)."""
        return not self.adapter.is_identity

    def describe_decision(self) -> str:
        """One line: which validation decided, by how much, and whether the adapter was kept."""
        d = self.decision
        if not d:
            return ""
        lo, hi = d["gain_interval"]
        line = (
            f"{'kept' if d['kept'] else 'kept the base model'}: {d['split']} ({d['n_queries']} queries) "
            f"{d['metric']} gain {d['gain']:+.4f} [{lo:+.4f}, {hi:+.4f}] at {d['significance']:.0%}"
        )
        if d.get("n_new"):
            line += f"; on {d['n_new']} queries about new documents {d['new_gain']:+.4f}"
        if d.get("test", "significant gain") != "significant gain":  # validation saw no document with traffic
            line += f"; tested: {d['test']}"
        if d.get("reason"):
            line += f" ({d['reason']})"
        if d.get("refit_on_queries"):
            line += f"; then trained again on all {d['refit_on_queries']} queries"
        return line

    def plot_history(self, path: os.PathLike | str, overwrite: bool = False) -> None:
        """PNG of training loss and validation metric per epoch (an existing file only with ``overwrite=True``)."""
        from adapter_retrievers.plots import plot_history

        plot_history(self.history, self.config.selection_metric, path, overwrite=overwrite)


def _thread_limited(method: Callable[..., T]) -> Callable[..., T]:
    """Run a trainer method under its config's thread limit (see ``TrainingConfig.threads``)."""

    @functools.wraps(method)
    def limited(self: AdapterTrainer, *args: Any, **kwargs: Any) -> T:
        with _limit_threads(self.config.threads):
            return method(self, *args, **kwargs)

    return limited


@contextlib.contextmanager
def _limit_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` torch and BLAS threads (numpy's scoring), then restore the caller's settings."""
    if threads is None:
        yield
        return
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(before)


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
        """Embed what is needed (once), hold out validation queries unless given, train, select.

        Without ``validation``: below ``cv_below_queries`` training queries, k-fold cross-validation
        grouped by document; otherwise a split by ``validation_split``.
        """
        if len(train) == 0:
            raise ValueError("the training set is empty: it needs at least 2 queries with a relevant document")
        train = train.check_against(corpus)
        fingerprint = train.fingerprint if validation is None else f"{train.fingerprint}+{validation.fingerprint}"
        if validation is not None:
            _check_disjoint(train, validation)
        if self.encoder is None:
            raise ValueError("fit() needs an encoder to embed queries; use fit_vectors() with precomputed vectors")
        if corpus.embeddings is None:
            corpus = corpus.with_embeddings(self.encoder.embed_documents(corpus.texts))
        train_vectors = self.encoder.embed_queries([train.queries[q] for q in train.query_ids])
        if validation is None:
            return self.fit_vectors(train, train_vectors, None, None, corpus, data_fingerprint=fingerprint)
        validation = validation.check_against(corpus)
        val_vectors = self.encoder.embed_queries([validation.queries[q] for q in validation.query_ids])
        return self.fit_vectors(train, train_vectors, validation, val_vectors, corpus, data_fingerprint=fingerprint)

    def validation_split(self, train: TrainingSet) -> tuple[TrainingSet, TrainingSet]:
        """``(train, validation)`` as :meth:`fit` holds them out (``validation_split``, ``validation_fraction``)."""
        cfg = self.config
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

    def _use_cross_validation(self, train: TrainingSet) -> bool:
        cfg = self.config
        return bool(cfg.cv_below_queries) and len(train) < cfg.cv_below_queries and cfg.solver == "gradient"

    @_thread_limited
    def fit_vectors(
        self,
        train: TrainingSet,
        train_vectors: np.ndarray,
        validation: TrainingSet | None,
        validation_vectors: np.ndarray | None,
        corpus: Corpus,
        data_fingerprint: str | None = None,
    ) -> TrainingResult:
        """Train from precomputed query vectors (rows in ``query_ids`` order) and an embedded corpus.

        ``validation=None``: hold out validation from ``train`` as :meth:`fit` does (k-fold
        cross-validation for small sets). ``data_fingerprint`` names the data the caller started from.
        """
        cfg = self.config
        if corpus.embeddings is None:
            raise ValueError("corpus has no embeddings: pass corpus.with_embeddings(vectors) or use fit()")
        dim = corpus.embeddings.shape[1]
        train_vectors = check_vectors(train_vectors, "training query vectors", rows=len(train), dimension=dim)
        split_name = "given validation set"
        given_documents = train.documents
        every_pair = None
        if validation is None:
            every_pair = (train, train_vectors)
            if len(train) < 2:
                raise ValueError("need at least 2 training queries to hold some out for validation")
            if self._use_cross_validation(train):
                return self._fit_cross_validated(train, train_vectors, corpus, data_fingerprint)
            rows = {q: i for i, q in enumerate(train.query_ids)}
            train, validation = self.validation_split(train)
            validation_vectors = train_vectors[[rows[q] for q in validation.query_ids]]
            train_vectors = train_vectors[[rows[q] for q in train.query_ids]]
            split_name = _split_label(validation.name)
        else:
            _check_disjoint(train, validation)
        validation_vectors = check_vectors(
            validation_vectors, "validation query vectors", rows=len(validation), dimension=dim
        )
        if len(train) == 0 or len(validation) == 0:
            raise ValueError(
                "need at least one training and one validation query with a relevant document in the corpus"
            )
        model_id = self.model_id or "unknown-model"
        started = time.perf_counter()
        scorer = _Scorer(validation, validation_vectors, corpus, cfg.selection_metric, train.documents)
        identity = QueryAdapter.identity(dim, model_id)

        def gate(choice: _Choice) -> dict[str, Any]:
            adapted = choice.per_query[0] if choice.epoch else scorer.base
            return _decide(scorer.base, adapted, scorer.new, choice, cfg, split_name)

        refitted = None
        if cfg.solver == "procrustes":
            candidates = iter([(1, float("nan"), self._procrustes(train, train_vectors, corpus, model_id))])
            chosen = _select(candidates, [scorer], cfg)
            decision = gate(chosen)
        else:
            refit_on = every_pair if cfg.refit else None
            chosen, decision, refitted = self._each_option(
                lambda option, position, state: _select(
                    self._train_epochs(train, train_vectors, corpus, model_id, config=option, position=position),
                    [scorer],
                    option,
                    state,
                ),
                gate,
                refit=None if refit_on is None else lambda option, state: self._trail(*refit_on, corpus, option, state),
            )
        best_adapter = blend(chosen.adapter, chosen.alpha) if decision["kept"] else identity
        report = compare(best_adapter, validation_vectors, validation, corpus, seen_documents=train.documents)
        if refitted is not None:  # trained again on every pair, validation included (``refit``)
            train = every_pair[0]
            best_adapter = blend(refitted, chosen.alpha)
            decision["refit_on_queries"] = len(train)
        seconds = time.perf_counter() - started
        return self._result(
            best_adapter,
            report,
            chosen,
            decision,
            seconds,
            train,
            len(validation),
            corpus,
            data_fingerprint,
            given_documents | validation.documents,
        )

    def _fit_cross_validated(
        self, train: TrainingSet, vectors: np.ndarray, corpus: Corpus, data_fingerprint: str | None
    ) -> TrainingResult:
        """k-fold selection and gate on out-of-fold queries (folds grouped by document), then refit on all."""
        cfg = self.config
        model_id = self.model_id or "unknown-model"
        started = time.perf_counter()
        rows = {q: i for i, q in enumerate(train.query_ids)}
        try:
            folds = train.folds(cfg.cv_folds, seed=cfg.seed, by="document")
        except ValueError:  # fewer document groups than folds: fall back to folds by query
            folds = train.folds(min(cfg.cv_folds, len(train)), seed=cfg.seed, by="query")
        scorers, parts = [], []
        for fold in folds:
            held = set(fold.queries)
            rest = train.subset([q for q in train.query_ids if q not in held])
            parts.append((rest, vectors[[rows[q] for q in rest.query_ids]]))
            fold_vectors = vectors[[rows[q] for q in fold.query_ids]]
            scorers.append(_Scorer(fold, fold_vectors, corpus, cfg.selection_metric, rest.documents))
        base = np.concatenate([s.base for s in scorers])
        new = np.concatenate([s.new for s in scorers])
        label = f"{len(folds)}-fold cross-validation grouped by document (out-of-fold)"

        def gate(choice: _Choice) -> dict[str, Any]:
            adapted = np.concatenate(choice.per_query) if choice.epoch else base
            return _decide(base, adapted, new, choice, cfg, label)

        chosen, decision, refitted = self._each_option(
            lambda option, _position, state: _select_folds(
                [self._train_epochs(r, v, corpus, model_id, config=option, show=False) for r, v in parts],
                scorers,
                option,
                state,
            ),
            gate,
            refit=lambda option, state: self._trail(train, vectors, corpus, option, state),
        )
        adapted = np.concatenate(chosen.per_query) if chosen.epoch else base
        adapter: QueryAdapter = QueryAdapter.identity(vectors.shape[1], model_id)
        if decision["kept"] and refitted is not None:
            adapter = blend(refitted, chosen.alpha)
        seconds = time.perf_counter() - started
        metric = cfg.selection_metric
        ids = [q for f in folds for q in f.query_ids]
        report = Comparison(
            RetrievalScores(ids, {metric: base}),
            RetrievalScores(ids, {metric: adapted if decision["kept"] else base}),
            f"{train.name}, {label}",
            model_id,
            len(corpus),
            adapter.kind,
            groups={q: "new" if n else "seen" for q, n in zip(ids, new)},
        )
        return self._result(
            adapter, report, chosen, decision, seconds, train, len(ids), corpus, data_fingerprint, train.documents
        )

    def _result(
        self,
        adapter: QueryAdapter,
        report: Comparison,
        chosen: _Choice,
        decision: dict[str, Any],
        seconds: float,
        train: TrainingSet,
        n_validation: int,
        corpus: Corpus,
        data_fingerprint: str | None,
        data_documents: set[str],
    ) -> TrainingResult:
        cfg = self.config
        best_epoch = chosen.epoch if decision["kept"] else 0
        adapter.metadata = {
            "training": asdict(cfg),
            "training_data": {
                "fingerprint": data_fingerprint or train.fingerprint,
                "name": train.name,
                "n_queries": len(train),
                "n_pairs": train.n_pairs,
                "documents_fingerprint": train.documents_fingerprint,
                "n_documents_seen": len(train.documents),
                # all positives of the data given to fit (validation included): what a user can recompute
                "data_documents_fingerprint": documents_fingerprint(data_documents),
                "corpus_fingerprint": corpus.fingerprint,
                "n_documents": len(corpus),
            },
            "validation": {
                "n_queries": n_validation,
                "baseline": decision["baseline"],
                "adapted": decision["adapted"] if decision["kept"] else decision["baseline"],
                "metric": cfg.selection_metric,
                "best_epoch": best_epoch,
                "blend": chosen.alpha,
                "negatives": chosen.negatives,
                "gain_interval": decision["gain_interval"],
                "rejected_not_significant": None if decision["kept"] or not chosen.epoch else decision,
                "decision": decision,
            },
            "train_seconds": round(seconds, 3),
        }
        return TrainingResult(
            adapter,
            report,
            chosen.history,
            best_epoch,
            seconds,
            len(train),
            n_validation,
            cfg,
            training_documents=train.documents,
            decision=decision,
        )

    # ------------------------------------------------------------------------------- internals

    def _each_option(
        self,
        select: Callable[[TrainingConfig, int, _RunState], _Choice],
        decide: Callable[[_Choice], dict[str, Any]],
        refit: Callable[[TrainingConfig, _RunState], QueryAdapter | None] | None = None,
    ) -> tuple[_Choice, dict[str, Any], QueryAdapter | None]:
        """Train and select a run per ``negatives`` option, ``parallel_runs`` at a time: the best choice, the
        gate's decision on it (``decide``), and with ``refit`` the chosen option trained again on every pair
        when the choice is kept.

        ``select(option, position, state)`` trains one option and selects its epoch and blend. When runs go
        in parallel, the first option's refit (the costliest option comes first: "all" documents as
        negatives) starts as soon as a thread is free and trails its selection run (``state``, see
        :meth:`_trail`), so it is mostly done when the choice is made; it stops as soon as its option loses,
        and another option's refit starts only if that option wins. The runs share only read-only data, so
        threads change no result: torch and numpy release the GIL in the matrix products that dominate a run.
        """
        options = _negative_options(self.config)
        states = [_RunState() for _ in options]
        workers = min(len(options) + (1 if refit else 0), _parallel_runs(self.config))
        if workers <= 1:
            winner, chosen = _best([select(option, 0, state) for option, state in zip(options, states)])
            decision = decide(chosen)
            refitted = refit(options[winner], states[winner]) if refit and decision["kept"] else None
            return chosen, decision, refitted
        with ThreadPoolExecutor(workers, thread_name_prefix="adapter-training") as pool:
            selections = [pool.submit(select, o, i, s) for i, (o, s) in enumerate(zip(options, states))]
            early = pool.submit(refit, options[0], states[0]) if refit else None
            winner, kept = -1, False
            try:
                winner, chosen = _best([future.result() for future in selections])
                decision = decide(chosen)
                kept = decision["kept"]
            finally:
                for i, state in enumerate(states):
                    if i != winner or not kept:
                        state.cancel()
            if refit is None or not kept:
                return chosen, decision, None
            late = early if winner == 0 else pool.submit(refit, options[winner], states[winner])
            return chosen, decision, late.result()

    def _trail(
        self,
        train: TrainingSet,
        vectors: np.ndarray,
        corpus: Corpus,
        option: TrainingConfig,
        state: _RunState,
        show: bool = False,
    ) -> QueryAdapter | None:
        """Train ``option`` on ``train`` up to the epoch its selection run (``state``) chooses: the snapshot
        at that epoch, or ``None`` when it chose none or was cancelled.

        Epoch ``e`` is trained only once the selection run has chosen ``e`` or a later epoch (its choice
        never moves back), and the run ends once the selection run is done and its epoch is reached, so a
        refit that runs beside its selection run never trains an epoch for nothing.
        """

        def ready(epoch: int) -> bool:
            with state.changed:
                state.changed.wait_for(lambda: state.cancelled or state.done or state.chosen >= epoch)
                return not state.cancelled and epoch <= state.chosen

        model_id = self.model_id or "unknown-model"
        best = None
        for epoch, _loss, snapshot in self._train_epochs(
            train, vectors, corpus, model_id, config=option, show=show, ready=ready
        ):
            with state.changed:
                if state.chosen == epoch:  # a later choice would replace it
                    best = snapshot
        return None if state.cancelled else best

    def _procrustes(self, train: TrainingSet, vectors: np.ndarray, corpus: Corpus, model_id: str) -> QueryAdapter:
        rows, targets = [], []
        for i, query_id in enumerate(train.query_ids):
            for doc_id in train.relevant[query_id]:
                rows.append(i)
                targets.append(corpus.position(doc_id))
        q = normalize_rows(vectors[rows])
        t = normalize_rows(corpus.embeddings[targets])
        return OrthogonalAdapter.procrustes(q, t, model_id)

    def _train_epochs(
        self,
        train: TrainingSet,
        vectors: np.ndarray,
        corpus: Corpus,
        model_id: str,
        config: TrainingConfig | None = None,
        show: bool = True,
        position: int = 0,
        ready: Callable[[int], bool] | None = None,
    ):
        """Yield ``(epoch, mean train loss, adapter snapshot)`` after every epoch (``position``: progress bar line).

        ``ready(epoch)``: asked before each epoch (it may wait); ``False`` ends the run.
        """
        import torch

        from adapter_retrievers.torch_adapters import TorchAdapter, consistency_loss, pair_loss

        cfg = config or self.config
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        device = torch.device(self.device)
        start = QueryAdapter.create(
            cfg.kind, vectors.shape[1], model_id, rank=cfg.rank, hidden=cfg.hidden, seed=cfg.seed
        )
        module = TorchAdapter(start, train_bias=cfg.bias).to(device)
        optimizer = torch.optim.Adam(
            [p for p in module.parameters() if p.requires_grad], lr=cfg.learning_rate, fused=device.type == "cpu"
        )

        docs = torch.from_numpy(corpus.normalized_embeddings()).to(device)
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
        candidate_docs = docs
        if cfg.negative_pool == "positives":  # rank among training positives only: no "trained vs rest" prior
            pool = np.unique(pair_doc_arr)
            where = np.full(n_docs, -1, dtype=np.int64)
            where[pool] = np.arange(len(pool))
            positives = [where[p] for p in positives]
            labelled = [where[n][where[n] >= 0] for n in labelled]
            pair_doc_arr = where[pair_doc_arr]
            candidate_docs = docs[torch.from_numpy(pool).to(device)]
        n_candidates = candidate_docs.shape[0]
        use_all = cfg.negatives == "all" and n_candidates <= cfg.all_negatives_limit
        if cfg.negatives == "all" and not use_all:
            logger.warning(
                "%d documents is too many to score per batch: using %d random negatives",
                n_candidates,
                cfg.fallback_negatives,
            )
        random_negatives = cfg.fallback_negatives if cfg.negatives == "all" else int(cfg.negatives)
        n_negatives = 0 if use_all else min(random_negatives, n_candidates - 1)
        # consistency: score pseudo-queries (documents) against all documents, or a random sample of them
        reference = docs if n_docs <= cfg.consistency_documents else None

        label = f"training {cfg.kind} adapter" + (
            "" if cfg.negatives == self.config.negatives else f", {cfg.negatives} negatives"
        )
        bar = _progress(cfg.epochs, self.progress and show, label, position=position)
        try:
            for epoch in range(1, cfg.epochs + 1):
                if ready is not None and not ready(epoch):
                    return
                order = rng.permutation(len(pair_query_arr))
                losses = []
                module.train()
                for start_row in range(0, len(order), cfg.batch_size):
                    batch = order[start_row : start_row + cfg.batch_size]
                    q_idx, d_idx = pair_query_arr[batch], pair_doc_arr[batch]
                    adapted = module(queries[q_idx])
                    if cfg.loss == "infonce":  # its temperature on (batch, d), not (batch, candidates)
                        adapted = adapted / cfg.temperature
                    candidates, target, mask = _candidates(
                        q_idx,
                        d_idx,
                        positives,
                        labelled,
                        n_candidates,
                        use_all,
                        n_negatives,
                        cfg.in_batch_negatives,
                        rng,
                    )
                    if candidates is None:  # every document is a candidate
                        scores = adapted @ candidate_docs.T
                    else:  # each row's own candidates, then the batch's positives (the same for every row)
                        own = candidates.shape[1] - (len(batch) if cfg.in_batch_negatives else 0)
                        cand = _rows(candidate_docs, candidates[:, :own], device).view(len(batch), own, -1)
                        scores = torch.einsum("bd,bmd->bm", adapted, cand)
                        if cfg.in_batch_negatives:
                            scores = torch.cat([scores, adapted @ _rows(candidate_docs, d_idx, device).T], dim=1)
                    loss = pair_loss(
                        cfg.loss,
                        scores,
                        torch.from_numpy(target).to(device),
                        _to_torch(mask, device),
                        temperature=1.0 if cfg.loss == "infonce" else cfg.temperature,
                        margin=cfg.margin,
                        overwrite_scores=True,
                    )
                    if cfg.identity_weight:
                        loss = loss + cfg.identity_weight * module.distance_from_start()
                    if cfg.consistency_weight:
                        pseudo = _rows(docs, rng.integers(0, n_docs, cfg.consistency_batch), device)
                        ref = reference
                        if ref is None:
                            sample = rng.choice(n_docs, cfg.consistency_documents, replace=False)
                            ref = _rows(docs, sample, device)
                        loss = loss + cfg.consistency_weight * consistency_loss(
                            module(pseudo), pseudo, ref, cfg.temperature
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


def _rows(matrix: Any, rows: np.ndarray, device: Any) -> Any:
    """``matrix[rows]`` for a torch matrix and numpy row numbers (flattened; ``index_select`` copies fastest)."""
    import torch

    return matrix.index_select(0, torch.from_numpy(np.ascontiguousarray(rows).reshape(-1)).to(device))


def _to_torch(valid: Any, device: Any) -> Any:
    """A ``valid`` of :func:`_candidates` as torch tensors."""
    import torch

    if valid is None:
        return None
    if isinstance(valid, tuple):
        return tuple(torch.from_numpy(part).to(device) for part in valid)
    return torch.from_numpy(valid).to(device)


def _check_disjoint(train: TrainingSet, validation: TrainingSet) -> None:
    overlap = set(train.queries) & set(validation.queries)
    if overlap:
        raise ValueError(f"{len(overlap)} queries are in both train and validation, e.g. {sorted(overlap)[:3]}")


def _split_label(name: str) -> str:
    return "validation split " + name.rsplit("validation split ", 1)[-1]


def blend(adapter: QueryAdapter, alpha: float) -> QueryAdapter:
    """``alpha * adapter + (1 - alpha) * identity``, again an adapter of the same kind (linear kinds only).

    For ``linear``: ``W' = alpha W + (1 - alpha) I``, ``b' = alpha b``; for ``low_rank`` and
    ``residual_mlp`` the residual branch is scaled by ``alpha``.
    """
    if alpha == 1.0 or adapter.is_identity:
        return adapter
    p = dict(adapter.params)
    if adapter.kind == "linear":
        eye = np.eye(adapter.dimension, dtype=np.float32)
        p["weight"], p["bias"] = alpha * p["weight"] + (1 - alpha) * eye, alpha * p["bias"]
    elif adapter.kind == "low_rank":
        p["up"], p["bias"] = alpha * p["up"], alpha * p["bias"]
    elif adapter.kind == "residual_mlp":
        p["w2"], p["b2"] = alpha * p["w2"], alpha * p["b2"]
    else:
        raise ValueError(f"cannot blend a {adapter.kind!r} adapter with the identity")
    return type(adapter)(adapter.dimension, adapter.base_model, p, adapter.normalize, dict(adapter.metadata))


_CACHED_SCORES = 1 << 24  # validation x corpus scores kept across epochs up to this many (64 MB of float32)


class _Scorer:
    """Per-query selection metric of candidates on one validation set; knows which queries are about new docs."""

    def __init__(self, queries: TrainingSet, vectors: np.ndarray, corpus: Corpus, metric: str, seen: set[str]) -> None:
        self.queries, self.vectors, self.corpus, self.metric = queries, vectors, corpus, metric
        groups = document_groups(queries, seen)
        self.new = np.array([groups[q] == "new" for q in queries.query_ids], dtype=bool)
        self.base = self(None)
        docs = corpus.normalized_embeddings()
        x = np.asarray(vectors, dtype=np.float32)
        # the same for every candidate: kept when small (computed here, as threads may share the scorer)
        self._base_scores = x @ docs.T if x.shape[0] * docs.shape[0] <= _CACHED_SCORES else None

    def __call__(self, adapter: QueryAdapter | None) -> np.ndarray:
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

        def scores(start: int, stop: int) -> list[np.ndarray]:
            adapted = mapped[start:stop] @ docs.T
            base = x[start:stop] @ docs.T if self._base_scores is None else self._base_scores[start:stop]
            return [alpha * adapted + (1 - alpha) * base for alpha in alphas]

        per_system = rank_metrics(self.queries, self.corpus, scores, (self.metric,))
        return {alpha: result[self.metric] for alpha, result in zip(alphas, per_system)}


class _RunState:
    """A selection run's best epoch so far and whether it is done, shared with the run that refits it."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.chosen = 0
        self.done = False
        self.cancelled = False

    def choose(self, epoch: int) -> None:
        with self.changed:
            self.chosen = epoch
            self.changed.notify_all()

    def finish(self) -> None:
        with self.changed:
            self.done = True
            self.changed.notify_all()

    def cancel(self) -> None:
        with self.changed:
            self.cancelled = True
            self.changed.notify_all()


@dataclass
class _Choice:
    """The selected candidate: epoch (0: none beat the base model), blend factor, per-query scores per scorer."""

    epoch: int = 0
    alpha: float = 1.0
    score: float = float("nan")
    adapter: QueryAdapter | None = None
    per_query: list[np.ndarray] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    negatives: Any = None


def _feasible(per_query: np.ndarray, base: np.ndarray, new: np.ndarray, cfg: TrainingConfig) -> bool:
    """Not below the base model on the validation queries about new documents (when there are any)."""
    if not cfg.protect_new_documents or not new.any():
        return True
    return per_query[new].mean() >= base[new].mean() - 1e-9


def _negative_options(cfg: TrainingConfig) -> list[TrainingConfig]:
    """One config per ``negatives`` option (a tuple of them is a selection grid, like ``blend``)."""
    if not isinstance(cfg.negatives, tuple):
        return [cfg]
    return [replace(cfg, negatives=option) for option in cfg.negatives]


def _best(choices: Sequence[_Choice]) -> tuple[int, _Choice]:
    """The highest-scoring choice across runs and its index (the first on ties: list the cheaper option last)."""
    best = 0
    for i, choice in enumerate(choices):
        if choice.epoch and choice.score > choices[best].score + 1e-9:
            best = i
    return best, choices[best]


def _select(candidates: Any, scorers: list[_Scorer], cfg: TrainingConfig, state: _RunState | None = None) -> _Choice:
    """Best (epoch, blend) by mean validation score among candidates not below base on new documents.

    ``state`` is told the best epoch after every epoch, and when selection is done (for a refit run that trails it).
    """
    state = state or _RunState()
    try:
        return _select_epochs(candidates, scorers[0], cfg, state)
    finally:
        state.finish()


def _select_epochs(candidates: Any, scorer: _Scorer, cfg: TrainingConfig, state: _RunState) -> _Choice:
    metric = cfg.selection_metric
    base_score = float(scorer.base.mean())
    history = [{"epoch": 0, "train_loss": float("nan"), metric: base_score}]
    choice = _Choice(score=base_score, per_query=[scorer.base], history=history)
    last_improved, best_raw = 0, -math.inf
    for epoch, loss, candidate in candidates:
        row = {"epoch": epoch, "train_loss": loss}
        alphas = sorted(cfg.blend, reverse=True)
        for alpha, per_query in scorer.blends(candidate, alphas).items():
            score = float(per_query.mean())
            if alpha == max(cfg.blend):
                row[metric] = score
                if scorer.new.any():
                    row[f"{metric} new documents"] = float(per_query[scorer.new].mean())
                if score > best_raw + 1e-9:
                    best_raw, last_improved = score, epoch
            if score > choice.score + 1e-9 and _feasible(per_query, scorer.base, scorer.new, cfg):
                choice = _Choice(epoch, alpha, score, candidate, [per_query], history, cfg.negatives)
                last_improved = epoch
        history.append(row)
        state.choose(choice.epoch)
        if epoch - last_improved >= cfg.patience:
            break
    return choice


def _select_folds(
    runs: list[Any], scorers: list[_Scorer], cfg: TrainingConfig, state: _RunState | None = None
) -> _Choice:
    """Best (epoch, blend) by the out-of-fold mean: every fold's run scored at each epoch and blend factor.

    A fold that stopped early keeps its last scores for later epochs. Runs stop when no fold improved
    for ``patience`` epochs. ``state``: as for :func:`_select`.
    """
    state = state or _RunState()
    try:
        return _select_fold_epochs(runs, scorers, cfg, state)
    finally:
        state.finish()
        for run in runs:
            run.close()


def _select_fold_epochs(runs: list[Any], scorers: list[_Scorer], cfg: TrainingConfig, state: _RunState) -> _Choice:
    metric = cfg.selection_metric
    alphas = sorted(cfg.blend, reverse=True)
    base = np.concatenate([s.base for s in scorers])
    new = np.concatenate([s.new for s in scorers])
    history = [{"epoch": 0, "train_loss": float("nan"), metric: float(base.mean())}]
    choice = _Choice(score=float(base.mean()), per_query=[s.base for s in scorers], history=history)
    latest: list[dict[float, np.ndarray]] = [{a: s.base for a in alphas} for s in scorers]
    alive = [True] * len(runs)
    last_improved, best_raw = 0, -math.inf
    for epoch in range(1, cfg.epochs + 1):
        losses = []
        for i, run in enumerate(runs):
            if not alive[i]:
                continue
            step = next(run, None)
            if step is None:
                alive[i] = False
                continue
            losses.append(step[1])
            latest[i] = scorers[i].blends(step[2], alphas)
        if not any(alive):
            break
        row = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else float("nan")}
        for alpha in alphas:
            parts = [latest[i][alpha] for i in range(len(runs))]
            per_query = np.concatenate(parts)
            score = float(per_query.mean())
            if alpha == alphas[0]:
                row[metric] = score
                if score > best_raw + 1e-9:
                    best_raw, last_improved = score, epoch
            if score > choice.score + 1e-9 and _feasible(per_query, base, new, cfg):
                choice = _Choice(epoch, alpha, score, None, parts, history, cfg.negatives)
                last_improved = epoch
        history.append(row)
        state.choose(choice.epoch)
        if epoch - last_improved >= cfg.patience:
            break
    return choice


def _decide(
    base: np.ndarray, adapted: np.ndarray, new: np.ndarray, chosen: _Choice, cfg: TrainingConfig, split: str
) -> dict[str, Any]:
    """The significance gate: keep the chosen candidate only if its validation gain is significant."""
    interval = paired_bootstrap(base, adapted, confidence=cfg.significance, seed=cfg.seed)
    kept = bool(chosen.epoch)
    reason = "" if kept else "no candidate beat the base model on validation"
    # validation about new documents only cannot see the gain on documents with traffic: test "not worse"
    blind = bool(new.all()) and cfg.non_inferiority_margin is not None
    test = f"not worse than the base model by more than {cfg.non_inferiority_margin}" if blind else "significant gain"
    if kept and cfg.require_significant_gain:
        if blind and interval[0] <= -cfg.non_inferiority_margin:
            kept, reason = False, f"may be worse than the base model by more than {cfg.non_inferiority_margin}"
        elif not blind and interval[0] <= 0:
            kept, reason = False, "gain not significant"
        if not kept:
            logger.info(
                "best epoch %d gains %s on validation: %s, keeping the base model", chosen.epoch, interval, reason
            )
    decision: dict[str, Any] = {
        "kept": kept,
        "split": split,
        "metric": cfg.selection_metric,
        "n_queries": len(base),
        "baseline": float(base.mean()),
        "adapted": float(adapted.mean()),
        "gain": float(adapted.mean() - base.mean()),
        "gain_interval": list(interval),
        "significance": cfg.significance,
        "test": test,
        "epoch": chosen.epoch,
        "blend": chosen.alpha,
        "n_new": int(new.sum()),
        "new_gain": float(adapted[new].mean() - base[new].mean()) if new.any() else None,
        "n_seen": int((~new).sum()),
        "seen_gain": float(adapted[~new].mean() - base[~new].mean()) if (~new).any() else None,
        "reason": reason,
    }
    return decision


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
) -> tuple[np.ndarray | None, np.ndarray, Any]:
    """Candidate documents per pair: returns ``(doc rows or None for all, target column, valid)``.

    The target is the pair's positive; the query's other positives are masked out, so a known positive
    is never scored as a negative. ``valid`` is a boolean mask of the candidates, or with every document
    as a candidate the ``(rows, columns)`` of the hidden ones, or ``None`` when nothing is hidden.
    """
    b = len(q_idx)
    if use_all:
        # a (batch, corpus) mask would be nearly all True: name the few hidden cells instead
        hidden = [(row, p) for row, q in enumerate(q_idx) for p in positives[q] if p != d_idx[row]]
        if not hidden:
            return None, d_idx.copy(), None
        rows, cols = np.array(hidden, dtype=np.int64).T
        return None, d_idx.copy(), (rows, cols)
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
    widest = max(len(positives[q]) for q in q_idx)
    known = np.full((b, widest), -1, dtype=np.int64)  # each row's positives, padded with -1
    for row, q in enumerate(q_idx):
        known[row, : len(positives[q])] = positives[q]
    mask = np.ones(candidates.shape, dtype=bool)
    mask[:, 1:] = ~(candidates[:, 1:, None] == known[:, None, :]).any(axis=2)
    return candidates, np.zeros(b, dtype=np.int64), mask


def _progress(total: int, enabled: bool, desc: str, unit: str = "epoch", position: int = 0) -> Any:
    from adapter_retrievers.progress import progress_bar

    return progress_bar(total, desc, unit, enabled=enabled, position=position, leave=False)


def _parallel_runs(cfg: TrainingConfig) -> int:
    """``cfg.parallel_runs``, or as many runs as fit on this process's cores at ``cfg.threads`` threads each."""
    if cfg.parallel_runs is not None:
        return cfg.parallel_runs
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if cfg.threads is None:
        import torch

        threads = torch.get_num_threads()
    else:
        threads = cfg.threads
    return max(1, cores // threads)


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
    train_vectors: np.ndarray | None = None,
) -> list[dict[str, float]]:
    """Held-out ``metric`` against number of training pairs (the Chroma report's data-size ablation).

    Each size is trained on a random subset of whole queries, once per seed; rows carry the mean and
    the spread over seeds, and the same for held-out queries about documents the subset trained on
    (``seen``) and about the others (``new``), with their mean counts. With ``train_vectors`` (rows
    in ``train.query_ids`` order) nothing is embedded. Plot with
    :func:`adapter_retrievers.plots.plot_learning_curve`.
    """
    if trainer.encoder is None and (test_vectors is None or train_vectors is None):
        raise ValueError("learning_curve needs a trainer with an encoder, or test_vectors and train_vectors")
    if corpus.embeddings is None:
        corpus = corpus.with_embeddings(trainer.encoder.embed_documents(corpus.texts))
    if test_vectors is None:
        test_vectors = trainer.encoder.embed_queries([test.queries[q] for q in test.query_ids])
    rows_of = {q: i for i, q in enumerate(train.query_ids)}
    baseline = score_vectors(test_vectors, test, corpus, (metric,)).mean()[metric]
    rows = []
    bar = _progress(len(sizes) * len(seeds), progress, "learning curve", unit="fit")
    for size in sizes:
        runs: list[dict[str, float]] = []
        for seed in seeds:
            subset = train.sample_pairs(size, seed=seed)
            bar.update(1)
            if len(subset) < 2:
                continue
            if train_vectors is None:
                result = trainer.fit(subset, corpus)
            else:
                vectors = train_vectors[[rows_of[q] for q in subset.query_ids]]
                result = trainer.fit_vectors(subset, vectors, None, None, corpus)
            report = compare(
                result.adapter, test_vectors, test, corpus, (metric,), seen_documents=result.training_documents
            )
            run = {"pairs": subset.n_pairs, metric: report.means(metric)[1], "gain": report.gain(metric)}
            for group in ("seen", "new"):
                run[f"n_{group}"] = report.n_queries_in(group)
                run[f"{group}_gain"] = report.gain(metric, group) if run[f"n_{group}"] else float("nan")
            runs.append(run)
        if runs:
            row = {
                "pairs": float(np.mean([r["pairs"] for r in runs])),
                metric: float(np.mean([r[metric] for r in runs])),
                "std": float(np.std([r[metric] for r in runs])),
                "baseline": baseline,
                "runs": len(runs),
            }
            for key in ("gain", "seen_gain", "new_gain", "n_seen", "n_new"):
                values = [r[key] for r in runs if not math.isnan(r[key])]
                row[key] = float(np.mean(values)) if values else float("nan")
            rows.append(row)
    bar.close()
    return rows

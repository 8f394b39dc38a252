"""The trainer: selection runs, the gate and the refit, in that order.

:meth:`AdapterTrainer.fit_vectors` holds validation queries out (a split, or k folds grouped by
document for small data), trains one run per ``negatives`` option (each option's folds in lockstep)
with :func:`~adapter_retrievers.training.run.train_epochs`, follows each run's validation curve
(:mod:`~adapter_retrievers.training.selection`) until it stops improving, keeps the best option, asks
the gate (:mod:`~adapter_retrievers.training.gate`) whether it beats no adapter, and with ``refit``
trains the kept option again on every pair for the chosen epochs. The option runs are independent jobs
for :func:`~adapter_retrievers.training.executor.run_all`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np

from adapter_retrievers.adapters import QueryAdapter, QueryGuard
from adapter_retrievers.data import Corpus, TrainingSet, check_vectors, documents_fingerprint
from adapter_retrievers.evaluation import Comparison, RetrievalScores, compare
from adapter_retrievers.training import run
from adapter_retrievers.training.config import TrainingConfig, negative_options, parallel_runs
from adapter_retrievers.training.executor import limit_threads, run_all
from adapter_retrievers.training.gate import decide
from adapter_retrievers.training.result import TrainingResult
from adapter_retrievers.training.selection import (
    Choice,
    Curve,
    EpochScores,
    best_option,
    choose,
    history,
    should_stop,
)
from adapter_retrievers.training.validation import (
    ValidationScorer,
    blend,
    check_disjoint,
    cross_validation_folds,
    validation_split,
)

T = TypeVar("T")
_NO_QUERIES = "need at least one training and one validation query with a relevant document in the corpus"


@dataclass
class Fold:
    """One part of validation: a run trains on ``train`` (query vectors ``vectors``) and is scored by ``scorer``."""

    train: TrainingSet
    vectors: np.ndarray
    scorer: ValidationScorer


@dataclass
class Plan:
    """How a fit is validated: one fold (a split) or k folds, what the gate calls it, and what a refit trains on."""

    folds: list[Fold]
    label: str
    every_pair: tuple[TrainingSet, np.ndarray] | None = None

    @property
    def base(self) -> np.ndarray:
        return np.concatenate([f.scorer.base for f in self.folds])

    @property
    def new(self) -> np.ndarray:
        return np.concatenate([f.scorer.new for f in self.folds])

    @property
    def query_ids(self) -> list[str]:
        return [q for f in self.folds for q in f.scorer.queries.query_ids]


def guard_for(plan: Plan, trained_on: np.ndarray | None, cfg: TrainingConfig) -> QueryGuard:
    """The summary of the queries the adapter trained on, calibrated on validation queries held out from it.

    Each fold's validation queries are measured against a summary of that fold's training queries only (a
    query the summary has seen looks closer than a new one from the same population would); the adapter's
    own summary is of every query it trained on (``trained_on``; None: the single fold's training queries).
    """
    held_out = [QueryGuard.summarise(f.vectors, cfg.guard_components).distance(f.scorer.vectors) for f in plan.folds]
    vectors = plan.folds[0].vectors if trained_on is None else trained_on
    summary = QueryGuard.summarise(vectors, cfg.guard_components)
    return summary.calibrated(np.concatenate(held_out), cfg.guard_quantile, cfg.guard_width)


def _thread_limited(method: Callable[..., T]) -> Callable[..., T]:
    """Run a trainer method under its config's thread limit (see ``TrainingConfig.threads``)."""

    @functools.wraps(method)
    def limited(self: AdapterTrainer, *args: Any, **kwargs: Any) -> T:
        with limit_threads(self.config.threads):
            return method(self, *args, **kwargs)

    return limited


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
            check_disjoint(train, validation)
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
        return validation_split(train, self.config)

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
        started = time.perf_counter()
        plan = self._plan(train, train_vectors, validation, validation_vectors, corpus)
        model_id = self.model_id or "unknown-model"
        base, new = plan.base, plan.new
        if cfg.solver == "procrustes":
            fold = plan.folds[0]
            rotation = run.procrustes(fold.train, fold.vectors, corpus, model_id)
            options = [cfg]
            choices = [self._select(plan, cfg, [iter([(1, float("nan"), rotation)])])]
        else:
            options = negative_options(cfg)
            jobs = [functools.partial(self._select_option, plan, corpus, option, i) for i, option in enumerate(options)]
            choices = run_all(jobs, min(len(options), parallel_runs(cfg)))
        winner = best_option(choices)
        chosen = choices[winner]
        adapted = chosen.per_query if chosen.epoch else base
        decision = decide(base, adapted, new, chosen, cfg, plan.label)
        identity = QueryAdapter.identity(dim, model_id)
        selected = blend(chosen.adapter, chosen.alpha) if decision["kept"] and chosen.adapter is not None else identity
        refitted = None
        if decision["kept"] and plan.every_pair is not None:
            refitted = self._refit(*plan.every_pair, corpus, options[winner], chosen.epoch)
            if refitted is not None:
                decision["refit_on_queries"] = len(plan.every_pair[0])
        adapter = blend(refitted, chosen.alpha) if refitted is not None else selected
        if cfg.guard and not adapter.is_identity:
            adapter = adapter.with_guard(guard_for(plan, plan.every_pair[1] if refitted is not None else None, cfg))
        if len(plan.folds) == 1:  # one validation split: the selected adapter's figures on it
            fold = plan.folds[0]
            report = compare(
                selected, fold.scorer.vectors, fold.scorer.queries, corpus, seen_documents=fold.train.documents
            )
            trained_on = plan.every_pair[0] if refitted is not None else fold.train
            data_documents = (
                plan.every_pair[0] if plan.every_pair else fold.train
            ).documents | fold.scorer.queries.documents
        else:  # k folds: out-of-fold figures
            ids, metric = plan.query_ids, cfg.selection_metric
            report = Comparison(
                RetrievalScores(ids, {metric: base}),
                RetrievalScores(ids, {metric: adapted if decision["kept"] else base}),
                f"{plan.every_pair[0].name}, {plan.label}",
                model_id,
                len(corpus),
                adapter.kind,
                groups={q: "new" if n else "seen" for q, n in zip(ids, new)},
            )
            trained_on = plan.every_pair[0]
            data_documents = trained_on.documents
        seconds = time.perf_counter() - started
        n_validation = len(base)
        return self._result(
            adapter,
            report,
            chosen,
            decision,
            seconds,
            trained_on,
            n_validation,
            corpus,
            data_fingerprint,
            data_documents,
        )

    # ------------------------------------------------------------------------------- stages

    def _plan(
        self,
        train: TrainingSet,
        vectors: np.ndarray,
        validation: TrainingSet | None,
        validation_vectors: np.ndarray | None,
        corpus: Corpus,
    ) -> Plan:
        """The validation of this fit: the given set, k folds grouped by document, or a split."""
        cfg = self.config
        metric = cfg.selection_metric
        if validation is not None:
            check_disjoint(train, validation)
            validation_vectors = check_vectors(
                validation_vectors, "validation query vectors", rows=len(validation), dimension=vectors.shape[1]
            )
            if len(train) == 0 or len(validation) == 0:
                raise ValueError(_NO_QUERIES)
            scorer = ValidationScorer(validation, validation_vectors, corpus, metric, train.documents)
            return Plan([Fold(train, vectors, scorer)], "given validation set")
        if len(train) < 2:
            raise ValueError("need at least 2 training queries to hold some out for validation")
        rows = {q: i for i, q in enumerate(train.query_ids)}

        def part(held: TrainingSet, rest: TrainingSet) -> Fold:
            held_vectors = vectors[[rows[q] for q in held.query_ids]]
            scorer = ValidationScorer(held, held_vectors, corpus, metric, rest.documents)
            return Fold(rest, vectors[[rows[q] for q in rest.query_ids]], scorer)

        if self._use_cross_validation(train):
            folds = cross_validation_folds(train, cfg)
            parts = []
            for fold in folds:
                held = set(fold.queries)
                parts.append(part(fold, train.subset([q for q in train.query_ids if q not in held])))
            label = f"{len(folds)}-fold cross-validation grouped by document (out-of-fold)"
            return Plan(parts, label, every_pair=(train, vectors))  # k-fold always refits on every pair
        rest, held = validation_split(train, cfg)
        if len(rest) == 0 or len(held) == 0:
            raise ValueError(_NO_QUERIES)
        label = "validation split " + held.name.rsplit("validation split ", 1)[-1]
        refit = cfg.refit and cfg.solver == "gradient"  # a closed-form rotation has no epochs to train again
        return Plan([part(held, rest)], label, every_pair=(train, vectors) if refit else None)

    def _select_option(self, plan: Plan, corpus: Corpus, option: TrainingConfig, position: int) -> Choice:
        """Train one ``negatives`` option on every fold of the plan and select its epoch and blend."""
        model_id = self.model_id or "unknown-model"
        single = len(plan.folds) == 1
        label = f"training {option.kind} adapter" + (
            "" if option.negatives == self.config.negatives else f", {option.negatives} negatives"
        )
        runs = [
            run.train_epochs(
                f.train, f.vectors, corpus, option, model_id, self.device, self.progress and single, label, position
            )
            for f in plan.folds
        ]
        return self._select(plan, option, runs)

    def _select(self, plan: Plan, option: TrainingConfig, runs: list[Iterator[Any]]) -> Choice:
        """Step every fold's run one epoch at a time, score it, and stop when the pooled curve stops improving.

        A fold whose run ended early (a loss that stopped being finite) keeps its last scores.
        """
        alphas = sorted(option.blend, reverse=True)
        folds = plan.folds
        new = plan.new
        curve = Curve.start(plan.base, new)
        latest = [{alpha: f.scorer.base for alpha in alphas} for f in folds]
        snapshots: list[QueryAdapter | None] = [None] * len(folds)
        alive = [True] * len(folds)
        chosen = Choice(score=curve.base, negatives=option.negatives, per_query=plan.base)
        try:
            for epoch in range(1, option.epochs + 1):
                losses = []
                for i, steps in enumerate(runs):
                    if not alive[i]:
                        continue
                    step = next(steps, None)
                    if step is None:
                        alive[i] = False
                        continue
                    losses.append(step[1])
                    latest[i] = folds[i].scorer.blends(step[2], alphas)
                    snapshots[i] = step[2]
                if not any(alive):
                    break
                per_query = {alpha: np.concatenate([scores[alpha] for scores in latest]) for alpha in alphas}
                loss = float(np.mean(losses)) if losses else float("nan")
                curve.epochs.append(EpochScores.of(epoch, loss, per_query, new))
                best_epoch, alpha, score = choose(curve, option)
                if best_epoch == epoch:
                    snapshot = snapshots[0] if len(folds) == 1 else None
                    chosen = Choice(epoch, alpha, score, option.negatives, per_query[alpha], snapshot)
                if should_stop(curve, option):
                    break
        finally:
            for steps in runs:
                close = getattr(steps, "close", None)
                if close is not None:
                    close()
        chosen.history = history(curve, option)
        return chosen

    def _refit(
        self, train: TrainingSet, vectors: np.ndarray, corpus: Corpus, option: TrainingConfig, epochs: int
    ) -> QueryAdapter | None:
        """``option`` trained again on ``train`` (every pair) for ``epochs`` epochs; None if the run ended sooner."""
        model_id = self.model_id or "unknown-model"
        steps = run.train_epochs(
            train, vectors, corpus, option, model_id, self.device, self.progress, f"refit on all {len(train)} queries"
        )
        with contextlib.closing(steps):
            for epoch, _loss, snapshot in steps:
                if epoch == epochs:
                    return snapshot
        return None

    def _result(
        self,
        adapter: QueryAdapter,
        report: Comparison,
        chosen: Choice,
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
        if adapter.guard is not None:
            adapter.metadata["guard"] = {
                "inner": adapter.guard.inner,
                "outer": adapter.guard.outer,
                "components": int(adapter.guard.variances.shape[0]),
                "calibrated_on": f"{n_validation} validation queries, quantile {cfg.guard_quantile}",
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

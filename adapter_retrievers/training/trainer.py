"""The trainer: selection runs, the gate and the refit, in that order.

:meth:`AdapterTrainer.fit_vectors` holds validation queries out (a split, or k folds grouped by
document for small data), trains one run per ``negatives`` option and fold
with :func:`~adapter_retrievers.training.run.train_epochs`, follows each option's pooled validation curve
(:mod:`~adapter_retrievers.training.selection`) until it stops improving, keeps the best option, asks
the gate (:mod:`~adapter_retrievers.training.gate`) whether it beats no adapter, and with ``refit``
trains the kept option again on every pair for the chosen epochs. The runs' epochs are independent jobs
for the :class:`~adapter_retrievers.training.executor.Pool` (``_select_options`` decides which runs next).
"""

from __future__ import annotations

import functools
import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future
from dataclasses import asdict, dataclass, replace
from typing import Any, TypeVar

import numpy as np

from adapter_retrievers.adapters import QueryAdapter, QueryGuard, average, blend
from adapter_retrievers.data import Corpus, TrainingSet, check_vectors, documents_fingerprint
from adapter_retrievers.evaluation import Comparison, RetrievalScores, compare
from adapter_retrievers.training import run
from adapter_retrievers.training.config import TrainingConfig, negative_options, parallel_runs
from adapter_retrievers.training.executor import Pool, limit_threads
from adapter_retrievers.training.gate import decide
from adapter_retrievers.training.result import TrainingResult
from adapter_retrievers.training.run import progress_bar
from adapter_retrievers.training.selection import (
    Choice,
    Curve,
    EpochScores,
    best_option,
    choose,
    history,
    outpaced,
    should_stop,
)
from adapter_retrievers.training.validation import (
    ValidationScorer,
    check_disjoint,
    cross_validation_folds,
    validation_folds,
    validation_split,
)
from adapter_retrievers.working_set import ArrayVectors, VectorSource, WorkingSet, working_set

T = TypeVar("T")
Step = tuple[float, QueryAdapter, dict[float, np.ndarray]]  # a fold's epoch: train loss, snapshot, validation scores
_NO_QUERIES = "need at least one training and one validation query with a relevant document in the corpus"


@dataclass
class Fold:
    """One part of validation: a run trains on ``train`` (query vectors ``vectors``) and is scored by ``scorer``."""

    train: TrainingSet
    vectors: np.ndarray
    scorer: ValidationScorer


@dataclass
class Plan:
    """How a fit is validated: one fold (a split) or k folds, what the gate calls it, every pair of the fit
    (``data``: what a refit trains on) and whether the kept adapter is trained again on them."""

    folds: list[Fold]
    label: str
    data: tuple[TrainingSet, np.ndarray]
    refit: bool = False
    start: QueryAdapter | None = None  # what training starts from and the gate compares with (None: identity)

    @property
    def trained_on(self) -> tuple[TrainingSet, np.ndarray]:
        """The queries the returned adapter learned from: every pair, unless one split held some out for good."""
        if len(self.folds) == 1 and not self.refit:
            return self.folds[0].train, self.folds[0].vectors
        return self.data

    @property
    def base(self) -> np.ndarray:
        return np.concatenate([f.scorer.base for f in self.folds])

    @property
    def new(self) -> np.ndarray:
        return np.concatenate([f.scorer.new for f in self.folds])

    @property
    def query_ids(self) -> list[str]:
        return [q for f in self.folds for q in f.scorer.queries.query_ids]


def guard_for(plan: Plan, cfg: TrainingConfig) -> QueryGuard:
    """The summary of the queries the adapter trained on, calibrated on validation queries held out from it.

    Each fold's validation queries are measured against a summary of that fold's training queries only (a
    query the summary has seen looks closer than a new one from the same population would); the adapter's
    own summary is of every query it trained on.
    """

    def summary(vectors: np.ndarray) -> QueryGuard:
        return QueryGuard.summarise(vectors, cfg.guard_components, cfg.guard_kind, cfg.seed)

    held_out = [summary(f.vectors).distance(f.scorer.vectors) for f in plan.folds]
    return summary(plan.trained_on[1]).calibrated(np.concatenate(held_out), cfg.guard_quantile, cfg.guard_width)


_SINGLE_RUN = {"new_documents_tolerance": 0.0, "selection_tolerance": 0.0}


def averaged(plan: Plan, cfg: TrainingConfig) -> bool:
    """Whether the kept adapter averages several runs: only then may validation's single runs be chosen with
    ``new_documents_tolerance`` and ``selection_tolerance`` (an average costs new documents less than a run)."""
    return len(plan.folds) > 1 and cfg.average_folds and cfg.kind == "linear"


def fold_gains(plan: Plan, chosen: Choice) -> list[float]:
    """Each fold's mean validation gain of the chosen candidate: how much the result depends on the data it saw."""
    sizes = np.cumsum([0, *(len(f.scorer.base) for f in plan.folds)])
    adapted = chosen.per_query if chosen.epoch else plan.base
    return [float(adapted[a:b].mean() - plan.base[a:b].mean()) for a, b in itertools.pairwise(sizes)]


class OptionRun:
    """One ``negatives`` option's selection: its runs (one per fold), their finished epochs, the pooled curve.

    :meth:`step` trains one fold's run one more epoch and scores it (a worker's job: it touches only that
    fold's run, so folds step in parallel threads); :meth:`store` queues the result, and :meth:`record` adds an
    epoch to the curve once every fold has finished it and updates the choice (both in the scheduling thread).
    A fold may finish its next epoch before the others finish this one: its result waits in its queue.
    """

    def __init__(self, plan: Plan, option: TrainingConfig, runs: list[Iterator[Any]]) -> None:
        self.plan, self.option, self.runs = plan, option, runs
        self.alphas = sorted(option.blend, reverse=True)
        self.new = plan.new
        self.curve = Curve.start(plan.base, self.new)
        self.latest = [{alpha: f.scorer.base for alpha in self.alphas} for f in plan.folds]
        self.snapshots: list[QueryAdapter | None] = [None] * len(runs)
        self.losses: list[float | None] = [None] * len(runs)
        self.alive = [True] * len(runs)
        self.finished: list[deque[Step | None]] = [deque() for _ in runs]  # not yet recorded; None: the run ended
        self.busy = [False] * len(runs)
        self.recorded = 0
        self.going = True
        self.chosen = Choice(score=self.curve.base, negatives=option.negatives, per_query=plan.base)
        self.chosen.history = history(self.curve, option)

    def alive_folds(self) -> list[int]:
        return [i for i, alive in enumerate(self.alive) if alive]

    def step(self, fold: int) -> Step | None:
        """Train ``fold``'s run one more epoch: ``(loss, snapshot, validation scores per blend)``, None if it ended
        (a loss that stopped being finite)."""
        step = next(self.runs[fold], None)
        if step is None:
            return None
        _epoch, loss, snapshot = step
        return loss, snapshot, self.plan.folds[fold].scorer.blends(snapshot, self.alphas)

    def store(self, fold: int, result: Step | None) -> None:
        self.busy[fold] = False
        self.finished[fold].append(result)

    def next_epoch(self, fold: int) -> int | None:
        """The epoch ``fold``'s run would train next; None when it cannot now (busy, ended or stopped)."""
        queue = self.finished[fold]
        if not self.going or not self.alive[fold] or self.busy[fold] or (queue and queue[-1] is None):
            return None
        epoch = self.recorded + len(queue) + 1
        return epoch if epoch <= self.option.epochs else None

    def ready(self) -> bool:
        """Whether every fold still training has finished the next epoch to record."""
        return self.recorded >= self.option.epochs or all(self.finished[i] for i in self.alive_folds())

    def record(self, epoch: int) -> None:
        if epoch > self.option.epochs:
            self.going = False
            return
        self.recorded = epoch
        for fold in self.alive_folds():
            result = self.finished[fold].popleft()
            if result is None:  # the run ended early: it keeps its last scores
                self.alive[fold], self.losses[fold] = False, None
            else:
                self.losses[fold], self.snapshots[fold], self.latest[fold] = result
        if not any(self.alive):
            self.going = False
            return
        losses = [loss for loss, alive in zip(self.losses, self.alive) if alive and loss is not None]
        per_query = {alpha: np.concatenate([scores[alpha] for scores in self.latest]) for alpha in self.alphas}
        loss = float(np.mean(losses)) if losses else float("nan")
        self.curve.epochs.append(EpochScores.of(epoch, loss, per_query, self.new))
        best_epoch, alpha, score = choose(self.curve, self.option)
        if best_epoch == epoch:
            single = self.snapshots[0] if len(self.runs) == 1 else None
            self.chosen = Choice(epoch, alpha, score, self.option.negatives, per_query[alpha], single)
            self.chosen.fold_adapters = [a for a in self.snapshots if a is not None]
        self.chosen.history = history(self.curve, self.option)
        if should_stop(self.curve, self.option) or epoch == self.option.epochs:
            self.going = False

    def close(self) -> None:
        for steps in self.runs:
            close = getattr(steps, "close", None)
            if close is not None:
                close()


class RefitRun:
    """A run on every pair that is stopped at an epoch chosen elsewhere (by its option's selection)."""

    def __init__(self, steps: Iterator[Any]) -> None:
        self.steps = steps
        self.epoch = 0
        self.snapshot: QueryAdapter | None = None
        self.ended = False
        self.busy = False

    def behind(self, epoch: int) -> bool:
        """Whether it may train another epoch without passing ``epoch``."""
        return not self.ended and not self.busy and self.epoch < epoch

    def step(self) -> Any:
        """Train one more epoch: ``(epoch, loss, snapshot)``, None if the run ended (a worker's job)."""
        return next(self.steps, None)

    def store(self, result: Any) -> None:
        self.busy = False
        if result is None:  # a loss that stopped being finite
            self.ended = True
            return
        self.epoch, _loss, self.snapshot = result

    def finish(self, epoch: int, bar: Any = None) -> QueryAdapter | None:
        """The snapshot at ``epoch`` (training on up to it); None if the run ended sooner."""
        while self.behind(epoch):
            self.store(self.step())
            if bar is not None:
                bar.update(1)
        return self.snapshot if self.epoch == epoch else None

    def close(self) -> None:
        close = getattr(self.steps, "close", None)
        if close is not None:
            close()


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
        corpus: Corpus | VectorSource,
        data_fingerprint: str | None = None,
        start: QueryAdapter | None = None,
    ) -> TrainingResult:
        """Train from precomputed query vectors (rows in ``query_ids`` order) and an embedded corpus.

        ``start``: train from this adapter instead of the identity, and keep it (not the identity) when
        nothing beats it on validation: a migration adapter's least-squares map, whose query vectors come
        from another model than the corpus's (:func:`~adapter_retrievers.training.migration.fit_migration`).
        Blending, the guard and the consistency term need the identity (or query and document vectors of one
        model), so they are off then; the kind is the start's.

        ``validation=None``: hold out validation from ``train`` as :meth:`fit` does (k-fold
        cross-validation for small sets). ``data_fingerprint`` names the data the caller started from.
        ``corpus``: a :class:`~adapter_retrievers.data.Corpus` with embeddings, or vectors read in chunks
        (a :class:`~adapter_retrievers.working_set.VectorSource`): then, as for a corpus of more than
        ``working_set_above`` documents, training holds only a working set of it.
        """
        cfg = self.config
        if start is not None:
            if not isinstance(corpus, Corpus) or len(corpus) > cfg.working_set_above:
                raise ValueError("training from a start adapter needs the whole corpus in memory (no working set)")
            if cfg.solver != "gradient":
                raise ValueError("a start adapter needs solver='gradient'")
            adjusted = replace(cfg, kind=start.kind, blend=(1.0,), guard=False, consistency_weight=0.0)
            if adjusted != cfg:
                self.config = adjusted
                try:
                    return self.fit_vectors(
                        train, train_vectors, validation, validation_vectors, corpus, data_fingerprint, start
                    )
                finally:
                    self.config = cfg
        started = time.perf_counter()
        working = self._working_set(train, train_vectors, validation, validation_vectors, corpus)
        if working is not None:
            corpus = working.corpus
        if corpus.embeddings is None:
            raise ValueError("corpus has no embeddings: pass corpus.with_embeddings(vectors) or use fit()")
        dim = corpus.embeddings.shape[1]
        if start is not None and start.output_dimension != dim:
            raise ValueError(
                f"index side: the start adapter outputs {start.output_dimension}-d vectors, the corpus has {dim}"
            )
        query_dim = dim if start is None else start.dimension
        train_vectors = check_vectors(train_vectors, "training query vectors", rows=len(train), dimension=query_dim)
        plan = self._plan(train, train_vectors, validation, validation_vectors, corpus, start)
        model_id = self.model_id or "unknown-model"
        base, new = plan.base, plan.new
        trailing, trailing_option = None, 0
        if cfg.solver == "procrustes":
            options, choices = [cfg], [self._procrustes(plan, corpus)]
        else:
            options = negative_options(cfg if averaged(plan, cfg) else replace(cfg, **_SINGLE_RUN))
            choices, trailing, trailing_option = self._select_options(plan, corpus, options)
        winner = best_option(choices)
        chosen = choices[winner]
        adapted = chosen.per_query if chosen.epoch else base
        decision = decide(base, adapted, new, chosen, cfg, plan.label)
        if len(plan.folds) > 1:
            decision["fold_gains"] = fold_gains(plan, chosen)
        decision["option_scores"] = {str(c.negatives): c.score for c in choices}
        outpaced_options = {str(c.negatives): c.outpaced_at for c in choices if c.outpaced_at}
        if outpaced_options:
            decision["outpaced_at_epoch"] = outpaced_options
        identity = QueryAdapter.identity(dim, model_id) if start is None else start
        selected = blend(chosen.adapter, chosen.alpha) if decision["kept"] and chosen.adapter is not None else identity
        adapter = identity
        if decision["kept"]:
            under_way = trailing if winner == trailing_option else None
            adapter = self._final(plan, chosen, options[winner], corpus, decision, under_way)
        if trailing is not None:
            trailing.close()
        if cfg.guard and not adapter.is_identity:
            adapter = adapter.with_guard(guard_for(plan, cfg))
        trained_on = plan.trained_on[0]
        if len(plan.folds) == 1:  # one validation split: the selected adapter's figures on it
            fold = plan.folds[0]
            report = compare(
                selected,
                fold.scorer.vectors,
                fold.scorer.queries,
                corpus,
                seen_documents=fold.train.documents,
                baseline=start,
            )
            data_documents = plan.data[0].documents | fold.scorer.queries.documents
        else:  # k folds: out-of-fold figures
            ids, metric = plan.query_ids, cfg.selection_metric
            report = Comparison(
                RetrievalScores(ids, {metric: base}),
                RetrievalScores(ids, {metric: adapted if decision["kept"] else base}),
                f"{plan.data[0].name}, {plan.label}",
                model_id,
                len(corpus),
                adapter.kind,
                groups={q: "new" if n else "seen" for q, n in zip(ids, new)},
            )
            data_documents = trained_on.documents
        seconds = time.perf_counter() - started
        n_validation = len(base)
        if working is not None:
            decision["working_set"] = working.describe()
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

    def _working_set(
        self,
        train: TrainingSet,
        vectors: np.ndarray,
        validation: TrainingSet | None,
        validation_vectors: np.ndarray | None,
        corpus: Corpus | VectorSource,
    ) -> WorkingSet | None:
        """The working set for a corpus too large to hold whole (None: train on the corpus as it is)."""
        cfg = self.config
        if isinstance(corpus, Corpus):
            if len(corpus) <= cfg.working_set_above or corpus.embeddings is None:
                return None
            source: VectorSource = ArrayVectors(corpus.embeddings, corpus.ids)
        elif isinstance(corpus, VectorSource):
            source = corpus
        else:
            raise TypeError(f"corpus must be a Corpus or a VectorSource, not {type(corpus).__name__}")
        queries = [np.asarray(vectors, dtype=np.float32)]
        needed = set(train.documents) | {d for docs in train.negatives.values() for d in docs}
        if validation is not None:
            queries.append(np.asarray(validation_vectors, dtype=np.float32))
            needed |= set(validation.documents) | {d for docs in validation.negatives.values() for d in docs}
        return working_set(
            source,
            np.concatenate(queries),
            needed,
            cfg.working_set_top_k,
            cfg.working_set_sample,
            cfg.seed,
        )

    def _plan(
        self,
        train: TrainingSet,
        vectors: np.ndarray,
        validation: TrainingSet | None,
        validation_vectors: np.ndarray | None,
        corpus: Corpus,
        start: QueryAdapter | None = None,
    ) -> Plan:
        """The validation of this fit: the given set, k folds (grouped by document for small data), or a split."""
        cfg = self.config
        metric = cfg.selection_metric
        gradient = cfg.solver == "gradient"  # a closed-form rotation has no epochs to train again
        if validation is not None:
            check_disjoint(train, validation)
            validation_vectors = check_vectors(
                validation_vectors, "validation query vectors", rows=len(validation), dimension=vectors.shape[1]
            )
            if len(train) == 0 or len(validation) == 0:
                raise ValueError(_NO_QUERIES)
            scorer = ValidationScorer(validation, validation_vectors, corpus, metric, train.documents, start)
            return Plan([Fold(train, vectors, scorer)], "given validation set", (train, vectors), start=start)
        if len(train) < 2:
            raise ValueError("need at least 2 training queries to hold some out for validation")
        rows = {q: i for i, q in enumerate(train.query_ids)}

        def part(held: TrainingSet, rest: TrainingSet) -> Fold:
            held_vectors = vectors[[rows[q] for q in held.query_ids]]
            scorer = ValidationScorer(held, held_vectors, corpus, metric, rest.documents, start)
            return Fold(rest, vectors[[rows[q] for q in rest.query_ids]], scorer)

        def folds_of(folds: list[TrainingSet]) -> list[Fold]:
            held = [set(fold.queries) for fold in folds]
            return [part(f, train.subset([q for q in train.query_ids if q not in h])) for f, h in zip(folds, held)]

        if self._use_cross_validation(train):
            folds = cross_validation_folds(train, cfg)
            label = f"{len(folds)}-fold cross-validation grouped by document (out-of-fold)"
            return Plan(folds_of(folds), label, (train, vectors), refit=True, start=start)  # small: every pair
        if cfg.validation_folds > 1 and gradient:
            folds = validation_folds(train, cfg)
            if all(len(f) for f in folds):
                split = (
                    "grouped by document + by query" if cfg.validation_split == "both" else f"by {cfg.validation_split}"
                )
                label = f"{len(folds)} validation folds {split} (out-of-fold)"
                return Plan(folds_of(folds), label, (train, vectors), refit=cfg.refit, start=start)
        rest, held = validation_split(train, cfg)
        if len(rest) == 0 or len(held) == 0:
            raise ValueError(_NO_QUERIES)
        label = "validation split " + held.name.rsplit("validation split ", 1)[-1]
        return Plan([part(held, rest)], label, (train, vectors), refit=cfg.refit and gradient, start=start)

    def _select_options(
        self, plan: Plan, corpus: Corpus, options: list[TrainingConfig]
    ) -> tuple[list[Choice], RefitRun | None, int]:
        """Train every ``negatives`` option on every fold of the plan, one epoch at a time, and select each
        option's epoch and blend on its pooled validation curve.

        Each epoch, the runs still going (every option's folds) advance in parallel (``parallel_runs`` workers;
        a worker free before the epoch is recorded starts a run's next one, so no worker waits for the slowest
        run of the epoch, and an epoch trained for a run that then stops is thrown away); an option stops when
        its curve stops improving (:func:`~.selection.should_stop`) or when it falls too far behind another
        (:func:`~.selection.outpaced`). With a refit, the leading option's refit (at first the first option: the
        costliest comes first, and usually wins) advances beside them, never past the epoch its option has
        chosen so far, so that it is mostly done when the choice is made; when its option is
        outpaced it starts again for the new leader. Returned with the choices and the option it trained.
        """
        model_id = self.model_id or "unknown-model"
        tracks = [
            OptionRun(
                plan,
                option,
                [
                    run.train_epochs(f.train, f.vectors, corpus, option, model_id, self.device, start=plan.start)
                    for f in plan.folds
                ],
            )
            for option in options
        ]
        leader = 0
        trailing = RefitRun(self._refit_steps(plan, corpus, options[leader])) if plan.refit else None
        runs = len(options) * len(plan.folds)
        label = f"training {self.config.kind} adapter" + (f" ({runs} runs)" if runs > 1 else "")
        longest = max(option.epochs for option in options)
        running: dict[Future, tuple[OptionRun | RefitRun, int]] = {}

        def collect(futures: Collection[Future]) -> None:
            for future in futures:
                owner, fold = running.pop(future)
                if isinstance(owner, RefitRun):
                    owner.store(future.result())
                else:
                    owner.store(fold, future.result())

        def start(pool: Pool, epoch: int) -> None:
            """Give every free worker a job: this epoch's folds first, then the refit, then folds one epoch on
            (with several workers: they fill the time others spend finishing this epoch)."""
            ahead = 1 if pool.workers > 1 else 0
            waiting = [
                (next_epoch - epoch, track, fold)
                for track in tracks
                for fold in range(len(track.runs))
                if (next_epoch := track.next_epoch(fold)) is not None and next_epoch <= epoch + ahead
            ]
            if trailing is not None and trailing.behind(tracks[leader].chosen.epoch):
                waiting.append((0.5, trailing, -1))
            waiting.sort(key=lambda job: job[0])
            for _order, owner, fold in waiting[: pool.workers - len(running)]:
                if isinstance(owner, RefitRun):
                    owner.busy = True
                    running[pool.submit(owner.step)] = (owner, fold)
                else:
                    owner.busy[fold] = True
                    running[pool.submit(functools.partial(owner.step, fold))] = (owner, fold)

        def settle(owner: OptionRun | RefitRun) -> None:
            """Wait for ``owner``'s jobs under way (a generator cannot be closed while it runs)."""
            collect([future for future, (who, _fold) in running.items() if who is owner])

        try:
            with (
                Pool(min(runs + plan.refit, parallel_runs(self.config))) as pool,
                progress_bar(longest, self.progress, label) as bar,
            ):
                for epoch in range(1, longest + 1):
                    going = [track for track in tracks if track.going]
                    if not going:
                        break
                    while not all(track.ready() for track in going):
                        start(pool, epoch)
                        if not running:
                            raise RuntimeError(f"no run can train epoch {epoch}: a scheduling bug")
                        collect(pool.first_done(running))
                    for track in going:
                        track.record(epoch)
                    for track, behind in zip(tracks, outpaced([t.curve for t in tracks], options[0])):
                        if behind and track.going:
                            track.going, track.chosen.outpaced_at = False, epoch
                    if trailing is not None and tracks[leader].chosen.outpaced_at:
                        settle(trailing)
                        trailing.close()
                        leader = best_option([t.chosen for t in tracks])
                        trailing = RefitRun(self._refit_steps(plan, corpus, options[leader]))
                    bar.update(1)
                    bar.set_postfix(best=f"{max(t.chosen.score for t in tracks):.4f}")
                collect(list(running))  # jobs started one epoch on, for runs that stopped meanwhile
        finally:
            for future in list(running):
                future.exception()  # waits; an error is already on its way up from the job that raised first
            for track in tracks:
                track.close()
        return [track.chosen for track in tracks], trailing, leader

    def _refit_steps(self, plan: Plan, corpus: Corpus, option: TrainingConfig) -> Iterator[Any]:
        train, vectors = plan.data
        model_id = self.model_id or "unknown-model"
        return run.train_epochs(train, vectors, corpus, option, model_id, self.device, start=plan.start)

    def _procrustes(self, plan: Plan, corpus: Corpus) -> Choice:
        """The closed-form rotation, scored as a one-epoch run."""
        fold = plan.folds[0]
        rotation = run.procrustes(fold.train, fold.vectors, corpus, self.model_id or "unknown-model")
        track = OptionRun(plan, self.config, [iter([(1, float("nan"), rotation)])])
        track.store(0, track.step(0))
        track.record(1)
        return track.chosen

    def _final(
        self,
        plan: Plan,
        chosen: Choice,
        option: TrainingConfig,
        corpus: Corpus,
        decision: dict[str, Any],
        refit: RefitRun | None,
    ) -> QueryAdapter:
        """The kept adapter: the refit on every pair (``refit``: one already under way for this option),
        averaged with the folds' runs (linear kind, ``average_folds``)."""
        cfg = self.config
        refitted = None
        if plan.refit:
            refit = refit or RefitRun(self._refit_steps(plan, corpus, option))
            with progress_bar(chosen.epoch, self.progress, f"refit on all {len(plan.data[0])} queries") as bar:
                bar.update(min(refit.epoch, chosen.epoch))
                refitted = refit.finish(chosen.epoch, bar)
            refit.close()
        if refitted is not None:
            decision["refit_on_queries"] = len(plan.data[0])
        if len(plan.folds) == 1:
            return blend(refitted if refitted is not None else chosen.adapter, chosen.alpha)
        parts = [average(chosen.fold_adapters)] if cfg.average_folds and cfg.kind == "linear" else []
        if refitted is not None:
            parts.append(refitted)
        if not parts:  # a non-linear kind without a refit: the fold whose held-out queries scored best
            parts.append(chosen.fold_adapters[int(np.argmax(fold_gains(plan, chosen)))])
        if len(parts) > 1:
            decision["averaged_runs"] = f"{len(chosen.fold_adapters)} folds' runs (their mean) and the refit"
        elif cfg.average_folds and refitted is None:
            decision["averaged_runs"] = f"{len(chosen.fold_adapters)} folds' runs"
        return blend(average(parts) if len(parts) > 1 else parts[0], chosen.alpha)

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
                "corpus_fingerprint": decision.get("working_set", {}).get("corpus_fingerprint", corpus.fingerprint),
                "n_documents": decision.get("working_set", {}).get("of_corpus", len(corpus)),
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
                "kind": adapter.guard.kind,
                "components": adapter.guard.size,
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

"""What decides a training run: :class:`TrainingConfig`, its defaults and their checks."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Literal

from adapter_retrievers.adapters import QueryAdapter
from adapter_retrievers.guards import GuardKind

Loss = Literal["infonce", "triplet", "mse_cosine"]
LOSSES = ("infonce", "triplet", "mse_cosine")
ValidationSplit = Literal["document", "query", "both"]
Negatives = int | Literal["all"]
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
    ``validation_folds``: with ``cv_below_queries`` training queries or more, the queries are split into
    this many folds; every fold trains one run per ``negatives`` option on the others and validates it on
    its own queries, so every training query is validated once and the epoch, blend and option are chosen
    on one curve pooled over all of them (with one split of 15%, the choice followed the split: SciFact,
    10 seeds, 0.8023 ± 0.031). ``1``: one validation split of ``validation_fraction`` instead.
    ``validation_split``: how the folds (or the one split) are held out: ``"document"`` (whole groups of
    queries that share relevant documents: every validation query is about a "new" document),
    ``"query"`` (random queries: mostly "seen" documents), or ``"both"`` (half the queries each way).
    Whenever validation has queries about new documents, a candidate is only selected if it is not below
    the base model on them by more than ``new_documents_tolerance`` (``protect_new_documents``).
    ``new_documents_tolerance``: validation scores single runs, each trained on part of the data; the
    adapter returned averages them with the refit (``average_folds``), which on SciFact cost new documents
    less than any single run did (+0.004 against -0.003 for the refit alone at the same epochs), so the
    runs may be this far below the base model on validation's new documents.
    ``selection_tolerance``: among candidates within this much of the best validation score, keep the
    one that learned most (the largest blend factor, then the latest epoch): validation cannot tell them
    apart, and the averaged adapter gains from more learning (SciFact, 10 seeds: 0.8205 ± 0.006 against
    0.8146 ± 0.007 without).
    ``average_folds``: the kept linear adapter is the mean of the folds' runs at the chosen epoch (itself
    the mean of their matrices) averaged with the refit on every pair: an ensemble in one matrix.
    ``cv_below_queries``/``cv_folds``: with fewer training queries than this, select and gate with
    ``cv_folds``-fold cross-validation grouped by document, then refit on all pairs.
    ``refit``: train the kept option again on every pair for the chosen epochs and blend. With cores to
    spare the first option's refit advances beside the selection runs, never past the epoch they have
    chosen so far.
    A tuple of ``negatives`` trains one run per option and keeps the one that validation prefers, under
    the same rules as the epoch and blend. The default ``("all", 5)``: the whole corpus gives the largest
    gain on queries about documents with traffic (SciFact), 5 random negatives learn more of how users
    ask (XQuAD new paragraphs: Spanish +0.104 vs +0.052, German +0.029 vs -0.001); validation picks.
    ``race_after``/``race_margin``: the options race: an option that, after ``race_after`` epochs, is more than
    ``race_margin`` below the leading option's validation score, and further below it than it climbed in its
    last ``race_after`` epochs, stops training (and the refit follows the leader). On SciFact and XQuAD
    (10 seeds each, 50 fits) the loser stopped at epoch 5-9 (once 17) and the winner never: every result was
    unchanged, and the SciFact fit took 0.64x as long (:func:`~adapter_retrievers.training.selection.outpaced`).
    ``race_after=0``: every option runs to its own early stop.
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
    ``parallel_runs``: how many training runs (every fold of every ``negatives`` option, and the trailing
    refit) advance at once, each in a Python thread with ``threads`` torch threads; ``None``: as many as the
    cores this process may use hold (cores // threads; a third thread on 2 cores was no faster). The runs
    are independent, so the result is the same either way; threads of one process time-share cores
    without spinning as oversubscribed torch threads do.
    ``blend``: also try ``alpha * adapter + (1 - alpha) * identity`` for each alpha (linear kinds) on
    validation and keep the best (ignored for ``orthogonal``).
    ``working_set_above``: a corpus with more documents than this (or vectors given as a
    :class:`~adapter_retrievers.working_set.VectorSource`, read in chunks) is not held whole: training and
    validation use a working set of the positives, each query's base ``working_set_top_k`` documents (one
    exact pass over the corpus) and ``working_set_sample`` random others, so peak memory follows the working
    set. An approximation of exact search (see :mod:`adapter_retrievers.working_set`), measured in
    ``docs/benchmarks.md``.
    ``guard``: store a summary of the training queries in the adapter (``guard_kind``: ``guard_components``
    centroids, or a Gaussian with that many principal directions; see :mod:`adapter_retrievers.guards`) so
    that at serving time a query gets the adapter only as far as it resembles them: fully up to the
    ``guard_quantile`` of held-out validation queries' distances, not at all beyond ``guard_width`` times that
    quantile's distance from their median, blended in between. A population the adapter never saw (another
    language, another tenant) then gets the base model instead of an adapter tuned for someone else
    (measured in ``docs/benchmarks.md``, "The per-query guard").
    """

    kind: str = "linear"
    loss: Loss = "infonce"
    negatives: Negatives | tuple[Negatives, ...] = ("all", 5)
    race_after: int = 5
    race_margin: float = 0.005
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
    validation_folds: int = 3
    average_folds: bool = True
    new_documents_tolerance: float = 0.01
    selection_tolerance: float = 0.002
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
    working_set_above: int = 1_000_000
    working_set_top_k: int = 50
    working_set_sample: int = 50_000
    guard: bool = True
    guard_kind: GuardKind = "centroids"
    guard_components: int = 16
    guard_quantile: float = 0.99
    guard_width: float = 0.5
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
        if self.validation_folds < 1:
            raise ValueError("validation_folds must be >= 1 (1: one validation split of validation_fraction)")
        if self.race_after < 0 or self.race_margin < 0:
            raise ValueError("race_after and race_margin must be >= 0")
        if self.new_documents_tolerance < 0 or self.selection_tolerance < 0:
            raise ValueError("new_documents_tolerance and selection_tolerance must be >= 0")
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
        if self.working_set_top_k < 1 or self.working_set_sample < 0 or self.working_set_above < 0:
            raise ValueError("working_set_top_k must be >= 1, working_set_sample and working_set_above >= 0")
        if self.guard_kind not in ("centroids", "gaussian"):
            raise ValueError(f"guard_kind must be 'centroids' or 'gaussian', got {self.guard_kind!r}")
        if self.guard_components < 1 or not 0 < self.guard_quantile <= 1 or self.guard_width <= 0:
            raise ValueError("guard_components must be >= 1, guard_quantile in (0, 1] and guard_width > 0")
        if self.kind not in BLENDABLE:  # a rotation mixed with the identity is no rotation
            self.blend = (1.0,)


def negative_options(cfg: TrainingConfig) -> list[TrainingConfig]:
    """One config per ``negatives`` option (a tuple of them is a selection grid, like ``blend``)."""
    if not isinstance(cfg.negatives, tuple):
        return [cfg]
    return [replace(cfg, negatives=option) for option in cfg.negatives]


def parallel_runs(cfg: TrainingConfig) -> int:
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

"""Changing the embedding model without re-embedding the corpus: a migration adapter, new queries → old index.

Re-embed a sample of the corpus with the new model; with each sampled document's stored (old-model) vector
that gives pairs ``(new vector, old vector)`` of one text; logged query texts embedded by both models add more
(``new_queries``/``old_queries``). :func:`fit_migration` fits on them the closed-form
least-squares (ridge) map new → old, ``y = x Wᵀ + b``, choosing the ridge strength (and whether to fit an
intercept) by k-fold cross-validation over the paired texts. That map is **the baseline** a migration is
judged by when the two models' dimensions differ (there is no identity to compare with): a held-out text's
new vector, mapped, should retrieve its own old vector among the old vectors (MRR@10).

The gate never returns anything worse than that baseline on validation:

- without relevance pairs, the other candidate is the closed-form rotation (``kind="orthogonal"``, equal
  dimensions only), kept only if its cross-validated MRR@10 is above the least-squares map's;
- with ``distill=True`` (no labels), the least-squares map fine-tuned by ranking distillation
  (:func:`distill_path`): each paired text's mapped new vector learns to rank the whole old index as its old
  vector does; kept only if held-out paired texts' mapped vectors put the old vector's first document higher
  (:func:`top_document_mrr`, cross-validated) than under the least-squares map;
- with relevance pairs (new-model query vectors and their relevant documents in the old index), the
  :class:`~adapter_retrievers.training.AdapterTrainer` trains the adapter from the least-squares start on the
  old index, and its gate keeps the trained adapter only if it beats that start on held-out queries (its
  validation split), returning the start otherwise.

The adapter serves like any other: embed the query with the new model, ``transform``, search the old index.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from adapter_retrievers.adapters import OrthogonalAdapter, QueryAdapter
from adapter_retrievers.data import Corpus, TrainingSet, check_vectors, normalize_rows
from adapter_retrievers.training.result import TrainingResult

RIDGE_GRID = (1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0)
DISTILL_TEMPERATURES = (0.05,)
DISTILL_STEPS = (25, 50)
MIGRATION_KINDS = ("linear", "low_rank", "residual_mlp", "orthogonal")


@dataclass
class MigrationResult:
    """The migration adapter, the least-squares baseline it was compared with, and every number of the choice."""

    adapter: QueryAdapter
    baseline: QueryAdapter
    decision: dict[str, Any]
    training: TrainingResult | None = None
    documents: int = 0

    @property
    def report(self) -> str:
        d = self.decision
        lines = [
            f"migration {self.adapter.base_model!r} ({self.adapter.dimension}-d) → {self.adapter.output_model!r} "
            f"({self.adapter.output_dimension}-d), kind {self.adapter.kind}, from {self.documents} documents "
            + (f"and {d['n_queries_by_both']} queries " if d.get("n_queries_by_both") else "")
            + "embedded by both models",
            f"least-squares baseline: ridge {d['ridge']}, intercept {d['intercept']}, "
            f"{d['folds']}-fold MRR@10 of each held-out text's own old vector {d['baseline_mrr']:.4f}",
        ]
        if d.get("distill"):
            t = d["distill"]
            lines.append(
                f"ranking distillation over the old index: tau {t['temperature']}, {t['steps']} steps, "
                f"{d['folds']}-fold {t['criterion']} against the old ranking {t['score']:.4f} vs least-squares "
                f"{t['baseline_score']:.4f}"
            )
        if d.get("orthogonal_mrr") is not None:
            lines.append(f"orthogonal (Procrustes): document MRR@10 {d['orthogonal_mrr']:.4f}")
        if self.training is not None:
            t = self.training.decision
            lines.append(
                f"fine-tuned on {self.training.n_train_queries} queries: {t['metric']} {t['adapted']:.4f} vs "
                f"least-squares {t['baseline']:.4f} on {t['n_queries']} held-out queries"
            )
        lines.append(f"kept: {d['kept']}" + (f" ({d['reason']})" if d.get("reason") else ""))
        return "\n".join(lines)


def least_squares(
    new_vectors: np.ndarray, old_vectors: np.ndarray, ridge: float, intercept: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The ridge map new → old: ``(W, b)`` with ``W`` of shape ``(d_old, d_new)``, minimising
    ``Σ‖W xᵢ + b − yᵢ‖² + ridge ‖W‖²`` (``b = 0`` without ``intercept``)."""
    return least_squares_path(new_vectors, old_vectors, (ridge,), intercept)[0]


def least_squares_path(
    new_vectors: np.ndarray, old_vectors: np.ndarray, ridges: Sequence[float], intercept: bool = True
) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`least_squares` for each strength in ``ridges`` from one SVD (the SVD is most of the cost)."""
    x, y = np.asarray(new_vectors, np.float64), np.asarray(old_vectors, np.float64)
    x_mean = x.mean(axis=0) if intercept else np.zeros(x.shape[1])
    y_mean = y.mean(axis=0) if intercept else np.zeros(y.shape[1])
    u, s, vt = np.linalg.svd(x - x_mean, full_matrices=False)
    uty = u.T @ (y - y_mean)
    out = []
    for ridge in ridges:
        w_t = vt.T @ ((s / (s**2 + ridge))[:, None] * uty)  # (d_new, d_old)
        out.append((w_t.T.astype(np.float32), (y_mean - x_mean @ w_t).astype(np.float32)))
    return out


def document_mrr(mapped: np.ndarray, targets: np.ndarray, candidates: np.ndarray, k: int = 10) -> np.ndarray:
    """Per mapped new vector: reciprocal rank (0 beyond ``k``) of its own old vector ``targets[i]`` among
    ``candidates`` (the old vectors; ties count in its favour), by cosine."""
    q, t, c = normalize_rows(mapped), normalize_rows(targets), normalize_rows(candidates)
    own = (q * t).sum(axis=1)
    rank = 1 + ((q @ c.T) > own[:, None] + 1e-6).sum(axis=1)
    return np.where(rank <= k, 1.0 / rank, 0.0)


def ranking_overlap(mapped: np.ndarray, targets: np.ndarray, documents: np.ndarray, k: int = 10) -> np.ndarray:
    """Per row: the share of the old vector ``targets[i]``'s top ``k`` of ``documents`` (the old index) that the
    mapped new vector ``mapped[i]`` also ranks in its top ``k``, by cosine: how much of what the old model
    retrieves for that text the migration reproduces (no labels needed)."""
    q, t, c = normalize_rows(mapped), normalize_rows(targets), normalize_rows(documents)
    k = min(k, len(c))
    top_mapped = np.argpartition(-(q @ c.T), k - 1, axis=1)[:, :k]
    top_old = np.argpartition(-(t @ c.T), k - 1, axis=1)[:, :k]
    hit = (top_mapped[:, :, None] == top_old[:, None, :]).any(axis=2)
    return hit.mean(axis=1)


def top_document_mrr(mapped: np.ndarray, targets: np.ndarray, documents: np.ndarray, k: int = 10) -> np.ndarray:
    """Per row: reciprocal rank (0 beyond ``k``) of the old vector ``targets[i]``'s first document of
    ``documents`` (the old index) in the mapped new vector ``mapped[i]``'s ranking: does the migration retrieve
    what the old model put first, and how high (no labels; for a re-embedded document that is its own old
    vector, so this is :func:`document_mrr` over the index)."""
    t, c = normalize_rows(targets), normalize_rows(documents)
    return document_mrr(mapped, c[np.argmax(t @ c.T, axis=1)], c, k)


AGREEMENT = {"top_document_mrr": top_document_mrr, "overlap@10": ranking_overlap}


def distill_path(
    start: QueryAdapter,
    new_vectors: np.ndarray,
    old_vectors: np.ndarray,
    documents: np.ndarray,
    temperature: float,
    steps: Sequence[int] = DISTILL_STEPS,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> list[QueryAdapter]:
    """Ranking distillation of a migration adapter: from ``start`` (the least-squares map), full-batch Adam on
    ``KL(softmax(old·D/τ) ‖ softmax(adapted(new)·D/τ))`` over ``documents`` ``D`` (every stored old vector of
    the index, not only the re-embedded ones), for each paired text (``new_vectors[i]``, ``old_vectors[i]``):
    the mapped new vector is trained to rank the old index as the text's old vector does, which the ridge
    map's vector error does not ask for. No labels. Returns the adapter after each of ``steps`` (sorted)."""
    import torch

    from adapter_retrievers.torch_adapters import TorchAdapter, consistency_loss

    checkpoints = sorted({int(s) for s in steps})
    if not checkpoints or checkpoints[0] < 1:
        raise ValueError(f"distillation steps must be >= 1, got {list(steps)}")
    torch.manual_seed(seed)
    module = TorchAdapter(start)
    x, y, d = (
        torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in (new_vectors, old_vectors, documents)
    )
    optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=learning_rate)
    out = []
    for step in range(1, checkpoints[-1] + 1):
        optimizer.zero_grad()
        consistency_loss(module(x), y, d, temperature).backward()
        optimizer.step()
        if step in checkpoints:
            out.append(module.export())
    return out


def _folds(n: int, k: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return [order[i::k] for i in range(k)]


def fit_migration(
    new_documents: np.ndarray,
    old_documents: np.ndarray,
    new_model: str,
    old_model: str,
    *,
    kind: str = "linear",
    new_queries: np.ndarray | None = None,
    old_queries: np.ndarray | None = None,
    pairs: TrainingSet | None = None,
    pair_vectors: np.ndarray | None = None,
    corpus: Corpus | None = None,
    validation: TrainingSet | None = None,
    validation_vectors: np.ndarray | None = None,
    ridge: Sequence[float] = RIDGE_GRID,
    folds: int = 5,
    seed: int = 0,
    normalize: bool = True,
    progress: bool = False,
    distill: bool = False,
    distill_temperatures: Sequence[float] = DISTILL_TEMPERATURES,
    distill_steps: Sequence[int] = DISTILL_STEPS,
    distill_learning_rate: float = 1e-3,
    distill_criterion: str = "top_document_mrr",
    **training: Any,
) -> MigrationResult:
    """Fit a migration adapter from ``new_model``'s queries into the index of ``old_model``.

    ``new_documents``/``old_documents``: the same documents (row for row) embedded by the new and the old model
    (a sample of the corpus re-embedded by the new one; the old vectors are the stored ones).
    ``new_queries``/``old_queries``: optional query texts (a query log, no labels needed) embedded by both
    models, row for row: more paired vectors, from the distribution the adapter serves. With a small sample
    they matter most (XQuAD-es, 24 re-embedded paragraphs: 28% of the old model's recall@10 without them, about
    80-85% with 595 logged queries; ``docs/benchmarks.md``). ``corpus``: the old
    index (ids and old vectors): its vectors are the candidates of the document MRR, and with ``pairs`` (a
    :class:`~adapter_retrievers.data.TrainingSet` about its documents) and ``pair_vectors`` (their queries
    embedded by the **new** model, rows in ``pairs.query_ids`` order) the adapter is fine-tuned from the
    least-squares start with :class:`~adapter_retrievers.training.AdapterTrainer` (``training``: its
    :class:`~adapter_retrievers.training.TrainingConfig` fields, e.g. ``epochs``, ``rank``, ``hidden``), validated
    on ``validation`` (its queries' new-model vectors: ``validation_vectors``) or on pairs it holds out. The
    fine-tuned adapter is kept only if the trainer's gate keeps it *and* its validation score is at least the
    least-squares start's: never worse than the baseline on validation.

    ``distill=True`` (needs ``corpus`` with its stored vectors; not with ``kind="orthogonal"``): ranking
    distillation (:func:`distill_path`) from the least-squares map, over every vector of the old index, for each
    temperature in ``distill_temperatures`` and number of full-batch Adam steps in ``distill_steps``
    (``distill_learning_rate``). The same folds choose, by ``distill_criterion``: ``"top_document_mrr"``
    (:func:`top_document_mrr`: a held-out paired text's mapped new vector should rank the old vector's first
    document of the old index high) or ``"overlap@10"`` (:func:`ranking_overlap`); the distilled map, refitted
    on every paired text with the best temperature and steps, is kept only if its cross-validated score is
    above the least-squares map's (a tie keeps the least-squares map); ``decision["distill"]`` holds both
    measures for every candidate. With ``pairs`` the fine-tuning then starts from the kept map. On XQuAD-es
    with the query log, overlap@10 scored every distilled map below the least-squares map while recall@10 of
    the test questions rose in every run; the first document's rank agreed with it (``docs/benchmarks.md``).
    """
    if kind not in MIGRATION_KINDS:
        raise ValueError(f"kind must be one of {MIGRATION_KINDS}, got {kind!r}")
    new = check_vectors(new_documents, "new-model document vectors")
    old = check_vectors(old_documents, "old-model document vectors", rows=len(new))
    if len(new) < 2:
        raise ValueError(f"need at least 2 documents embedded by both models, got {len(new)}")
    d_in, d_out = new.shape[1], old.shape[1]
    if (new_queries is None) != (old_queries is None):
        raise ValueError("pass new_queries and old_queries together (the same query texts embedded by both models)")
    n_documents, n_logged = len(new), 0
    if new_queries is not None:
        new_q = check_vectors(new_queries, "new-model query vectors (queries by both)", dimension=d_in)
        old_q = check_vectors(
            old_queries, "old-model query vectors (queries by both)", rows=len(new_q), dimension=d_out
        )
        new, old, n_logged = np.concatenate([new, new_q]), np.concatenate([old, old_q]), len(new_q)
    if kind == "orthogonal" and d_in != d_out:
        raise ValueError(
            f"kind='orthogonal' needs equal dimensions, the models have {d_in} and {d_out}: use linear, "
            "low_rank or residual_mlp"
        )
    if (pairs is None) != (pair_vectors is None):
        raise ValueError("pass pairs and pair_vectors together (the pairs' queries embedded by the new model)")
    if pairs is not None and (corpus is None or corpus.embeddings is None):
        raise ValueError("fine-tuning on relevance pairs needs corpus=... (the old index with its stored vectors)")
    if corpus is not None and corpus.embeddings is not None and corpus.embeddings.shape[1] != d_out:
        raise ValueError(
            f"index side: the corpus holds {corpus.embeddings.shape[1]}-d vectors, the old-model documents are "
            f"{d_out}-d"
        )
    if distill and (corpus is None or corpus.embeddings is None):
        raise ValueError("distill=True needs corpus=... (the old index with its stored vectors to distil over)")
    if distill and distill_criterion not in AGREEMENT:
        raise ValueError(f"distill_criterion must be one of {tuple(AGREEMENT)}, got {distill_criterion!r}")
    if distill and kind == "orthogonal":
        raise ValueError("distill=True trains the least-squares map: use kind linear, low_rank or residual_mlp")
    if pair_vectors is not None:
        pair_vectors = check_vectors(pair_vectors, "new-model query vectors", rows=len(pairs), dimension=d_in)
    if normalize:
        new, old = normalize_rows(new), normalize_rows(old)
    candidates = old if corpus is None or corpus.embeddings is None else np.concatenate([old, corpus.embeddings])

    # the least-squares baseline: ridge strength and intercept by k-fold cross-validation over the paired rows
    k = max(2, min(folds, len(new)))
    parts = _folds(len(new), k, seed)
    per_doc = {(float(strength), intercept): np.zeros(len(new)) for strength in ridge for intercept in (True, False)}
    for held in parts:
        rest = np.setdiff1d(np.arange(len(new)), held)
        for intercept in (True, False):
            for strength, (w, b) in zip(ridge, least_squares_path(new[rest], old[rest], ridge, intercept)):
                per_doc[(float(strength), intercept)][held] = document_mrr(new[held] @ w.T + b, old[held], candidates)
    scores = {key: float(values.mean()) for key, values in per_doc.items()}
    (best_ridge, best_intercept), baseline_mrr = max(scores.items(), key=lambda item: (item[1], item[0][0]))
    weight, bias = least_squares(new, old, best_ridge, best_intercept)
    options = {key: training.pop(key) for key in ("rank", "hidden") if key in training}
    baseline = _in_kind("linear", weight, bias, new_model, old_model, normalize, seed, options)
    decision: dict[str, Any] = {
        "baseline": "least-squares (ridge) map new → old on the paired documents"
        + (" and logged queries" if n_logged else ""),
        "ridge": best_ridge,
        "intercept": best_intercept,
        "folds": k,
        "baseline_mrr": baseline_mrr,
        "grid": {f"{r}{'' if i else ' (no intercept)'}": s for (r, i), s in scores.items()},
        "n_documents": n_documents,
        "n_queries_by_both": n_logged,
        "kept": "least-squares",
        "reason": "",
    }
    adapter = baseline
    if kind in ("low_rank", "residual_mlp"):
        adapter = _in_kind(kind, weight, bias, new_model, old_model, normalize, seed, options)

    if kind == "orthogonal":  # a rotation (equal dimensions): kept only if not worse than least squares
        per_doc = np.zeros(len(new))
        for held in parts:
            rest = np.setdiff1d(np.arange(len(new)), held)
            rotation = OrthogonalAdapter.procrustes(new[rest], old[rest], new_model, normalize)
            per_doc[held] = document_mrr(rotation._apply(new[held]), old[held], candidates)
        decision["orthogonal_mrr"] = float(per_doc.mean())
        if decision["orthogonal_mrr"] > baseline_mrr:  # a tie keeps the baseline
            rotation = OrthogonalAdapter.procrustes(new, old, new_model, normalize)
            adapter = type(rotation)(d_in, new_model, rotation.params, normalize, {}, None, old_model, d_out)
            decision["kept"] = "orthogonal"
        else:
            decision["reason"] = "the rotation retrieves held-out documents worse than the least-squares map"

    if distill:
        adapter = _distilled(
            adapter,
            new,
            old,
            parts,
            corpus,
            kind,
            (best_ridge, best_intercept),
            decision,
            (new_model, old_model, normalize, seed, options),
            (distill_temperatures, distill_steps, distill_learning_rate, distill_criterion),
        )

    result_training = None
    if pairs is not None:
        from adapter_retrievers.training.trainer import AdapterTrainer

        start = adapter
        trainer = AdapterTrainer(model_id=new_model, progress=progress, seed=seed, **options, **training)
        result_training = trainer.fit_vectors(pairs, pair_vectors, validation, validation_vectors, corpus, start=start)
        t = result_training.decision
        if t["kept"] and t["adapted"] < t["baseline"]:  # the trainer's non-inferiority margin allows a little worse
            t["kept"], t["reason"] = False, "worse than the least-squares start on validation"
        if t["kept"]:
            adapter = result_training.adapter
            decision["kept"] = f"fine-tuned {adapter.kind}"
        else:
            adapter = start
            decision["reason"] = f"fine-tuning did not beat the start: {result_training.decision['reason']}"
    summary = {k: v for k, v in decision.items() if k != "grid"}
    if "distill" in summary:  # the choice, without every candidate's scores
        summary["distill"] = {k: v for k, v in summary["distill"].items() if k != "grid"}
    adapter.metadata = {**adapter.metadata, "migration": summary}
    return MigrationResult(adapter, baseline, decision, result_training, n_documents)


def _distilled(
    start: QueryAdapter,
    new: np.ndarray,
    old: np.ndarray,
    parts: list[np.ndarray],
    corpus: Corpus,
    kind: str,
    ridge: tuple[float, bool],
    decision: dict[str, Any],
    names: tuple[str, str, bool, int, dict[str, Any]],
    grid: tuple[Sequence[float], Sequence[int], float, str],
) -> QueryAdapter:
    """The ``distill=True`` part of :func:`fit_migration`: choose temperature and steps on the folds, keep the
    distilled map only if it beats the least-squares map on held-out paired texts; fills ``decision``."""
    new_model, old_model, normalize, seed, options = names
    temperatures, steps, learning_rate, criterion = grid
    steps = sorted({int(s) for s in steps})
    documents = corpus.normalized_embeddings() if normalize else np.asarray(corpus.embeddings, np.float32)
    held_out = {name: {"least-squares": np.zeros(len(new))} for name in AGREEMENT}
    for held in parts:
        rest = np.setdiff1d(np.arange(len(new)), held)
        weight, bias = least_squares(new[rest], old[rest], *ridge)
        fold_start = _in_kind(kind, weight, bias, new_model, old_model, normalize, seed, options)
        candidates = {"least-squares": fold_start}
        for temperature in temperatures:
            path = distill_path(fold_start, new[rest], old[rest], documents, temperature, steps, learning_rate, seed)
            candidates.update({(float(temperature), n): adapted for n, adapted in zip(steps, path)})
        for key, adapter in candidates.items():
            mapped = adapter.transform(new[held])
            for name, measure in AGREEMENT.items():
                held_out[name].setdefault(key, np.zeros(len(new)))[held] = measure(mapped, old[held], documents)
    means = {name: {key: float(v.mean()) for key, v in values.items()} for name, values in held_out.items()}
    chosen = dict(means[criterion])
    baseline = chosen.pop("least-squares")
    (temperature, n_steps), best = max(chosen.items(), key=lambda item: (item[1], -item[0][1]))
    decision["distill"] = {
        "criterion": criterion,
        "temperature": temperature,
        "steps": n_steps,
        "score": best,
        "baseline_score": baseline,
        "grid": {
            name: {key if isinstance(key, str) else f"tau {key[0]}, {key[1]} steps": v for key, v in values.items()}
            for name, values in means.items()
        },
    }
    if best <= baseline:  # a tie keeps the least-squares map
        decision["reason"] = f"distillation does not beat the least-squares map on held-out {criterion}"
        return start
    (adapter,) = distill_path(start, new, old, documents, temperature, (n_steps,), learning_rate, seed)
    decision["kept"] = f"distilled {adapter.kind}"
    return adapter


def _in_kind(
    kind: str,
    weight: np.ndarray,
    bias: np.ndarray,
    new_model: str,
    old_model: str,
    normalize: bool,
    seed: int,
    options: dict[str, Any],
) -> QueryAdapter:
    """The least-squares map as an adapter of ``kind`` (the projection of low_rank and residual_mlp)."""
    d_out, d_in = weight.shape
    adapter = QueryAdapter.create(
        kind, d_in, new_model, normalize, old_model, d_out, projection=weight, seed=seed, **options
    )
    name = {"linear": "bias", "low_rank": "bias", "residual_mlp": "b2"}[kind]
    adapter.params[name] = np.ascontiguousarray(bias, dtype=np.float32)
    return adapter


def migration_sample(corpus: Corpus, fraction: float, seed: int = 0) -> list[str]:
    """The ids of a random ``fraction`` of ``corpus`` to re-embed with the new model (at least 2)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    n = min(len(corpus), max(2, math.ceil(fraction * len(corpus))))
    rows = np.sort(np.random.default_rng(seed).choice(len(corpus), n, replace=False))
    return [corpus.ids[int(i)] for i in rows]

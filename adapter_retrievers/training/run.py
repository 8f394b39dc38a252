"""One training run: the epochs of one adapter over (query, positive) pairs and their negatives.

Everything the run needs is computed from its config and data, so independent runs (one per negatives
option, one per fold, the refit) share nothing but read-only arrays and can train in parallel threads.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from adapter_retrievers.adapters import OrthogonalAdapter, QueryAdapter
from adapter_retrievers.data import Corpus, TrainingSet, normalize_rows
from adapter_retrievers.training.config import TrainingConfig

logger = logging.getLogger(__name__)


def train_epochs(
    train: TrainingSet,
    vectors: np.ndarray,
    corpus: Corpus,
    cfg: TrainingConfig,
    model_id: str,
    device: str = "cpu",
    progress: bool = False,
    label: str = "",
    position: int = 0,
    start: QueryAdapter | None = None,
) -> Iterator[tuple[int, float, QueryAdapter]]:
    """Yield ``(epoch, mean train loss, adapter snapshot)`` after every epoch, for ``cfg.epochs`` epochs.

    Deterministic for ``cfg.seed``: the initialisation, the order of the pairs and the random negatives all
    come from it, so two runs of one config on one machine give the same snapshots. A loss that stops being
    finite ends the run. ``label`` and ``position``: the progress bar's text and line. ``start``: the adapter
    to train from (a migration's least-squares map) instead of a new one of ``cfg.kind`` at the identity.
    """
    import torch

    from adapter_retrievers.torch_adapters import TorchAdapter, consistency_loss, pair_loss

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    torch_device = torch.device(device)
    if start is None:
        start = QueryAdapter.create(
            cfg.kind, vectors.shape[1], model_id, rank=cfg.rank, hidden=cfg.hidden, seed=cfg.seed
        )
    module = TorchAdapter(start, train_bias=cfg.bias).to(torch_device)
    optimizer = torch.optim.Adam(
        [p for p in module.parameters() if p.requires_grad], lr=cfg.learning_rate, fused=torch_device.type == "cpu"
    )

    docs = torch.from_numpy(corpus.normalized_embeddings()).to(torch_device)
    queries = torch.from_numpy(vectors).to(torch_device)
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
        candidate_docs = docs[torch.from_numpy(pool).to(torch_device)]
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

    bar = progress_bar(cfg.epochs, progress, label or f"training {cfg.kind} adapter", position=position)
    try:
        for epoch in range(1, cfg.epochs + 1):
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
                    cand = _rows(candidate_docs, candidates[:, :own], torch_device).view(len(batch), own, -1)
                    scores = torch.einsum("bd,bmd->bm", adapted, cand)
                    if cfg.in_batch_negatives:
                        scores = torch.cat([scores, adapted @ _rows(candidate_docs, d_idx, torch_device).T], dim=1)
                loss = pair_loss(
                    cfg.loss,
                    scores,
                    torch.from_numpy(target).to(torch_device),
                    _to_torch(mask, torch_device),
                    temperature=1.0 if cfg.loss == "infonce" else cfg.temperature,
                    margin=cfg.margin,
                    overwrite_scores=True,
                )
                if cfg.identity_weight:
                    loss = loss + cfg.identity_weight * module.distance_from_start()
                if cfg.consistency_weight:
                    pseudo = _rows(docs, rng.integers(0, n_docs, cfg.consistency_batch), torch_device)
                    ref = reference
                    if ref is None:
                        sample = rng.choice(n_docs, cfg.consistency_documents, replace=False)
                        ref = _rows(docs, sample, torch_device)
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


def progress_bar(total: int, enabled: bool, desc: str, unit: str = "epoch", position: int = 0) -> Any:
    from adapter_retrievers.progress import progress_bar as bar

    return bar(total, desc, unit, enabled=enabled, position=position, leave=False)


def procrustes(train: TrainingSet, vectors: np.ndarray, corpus: Corpus, model_id: str) -> QueryAdapter:
    """The closed-form rotation that maps each training query closest to its positives (``solver="procrustes"``)."""
    rows, targets = [], []
    for i, query_id in enumerate(train.query_ids):
        for doc_id in train.relevant[query_id]:
            rows.append(i)
            targets.append(corpus.position(doc_id))
    q = normalize_rows(vectors[rows])
    t = normalize_rows(corpus.embeddings[targets])
    return OrthogonalAdapter.procrustes(q, t, model_id)

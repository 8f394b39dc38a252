"""The learning curve: held-out quality against the number of training pairs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from adapter_retrievers.data import Corpus, TrainingSet
from adapter_retrievers.evaluation import compare, score_vectors
from adapter_retrievers.training.run import progress_bar
from adapter_retrievers.training.trainer import AdapterTrainer


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
    bar = progress_bar(len(sizes) * len(seeds), progress, "learning curve", unit="fit")
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

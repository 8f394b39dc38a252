"""Benchmark: the package's default against NUDGE-N (ICLR 2025) on SciFact, side by side, seed by seed.

NUDGE does not adapt queries: it rewrites the vectors of the documents that training queries were about
(``nudge-ft``, ``NUDGEN().finetune_embeddings(doc_embs, train_set, val_set)``; its own recipe holds out 20%
of the training queries, here by query with the seed). Both use the same all-MiniLM-L6-v2 vectors and
exact search over the whole corpus; both are scored by this package's metric code on the 300 SciFact test
queries, overall and split into queries about documents seen in training and about new ones.

    pip install nudge-ft            # not a dependency of the package
    python benchmarks/nudge_scifact.py [--seeds 0 1 2 3 4 5 6 7 8 9]

Results: ``benchmarks/results/nudge_scifact.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone

import numpy as np

from adapter_retrievers import AdapterTrainer, compare
from adapter_retrievers.evaluation import score_vectors
from common import RESULTS, encoder, machine, query_vectors, scifact


def nudge_n(corpus, train, train_vectors, seed: int):
    """NUDGE-N's document vectors, trained on 80% of the training queries and validated on the rest."""
    from nudge import NUDGEN

    rest, held = train.split(0.2, seed=seed, by="query")
    row = {q: i for i, q in enumerate(train.query_ids)}

    def as_set(part):
        return {
            "q_embs": np.ascontiguousarray(train_vectors[[row[q] for q in part.query_ids]], dtype=np.float32),
            "q_ans_indx": [[corpus.position(d) for d in part.relevant[q]] for q in part.query_ids],
        }

    import torch

    torch.manual_seed(seed)
    docs = np.ascontiguousarray(corpus.embeddings, dtype=np.float32)
    return NUDGEN(device=torch.device("cpu")).finetune_embeddings(docs, as_set(rest), as_set(held))


def groups_of(test, seen_documents):
    return np.array([not (set(test.relevant[q]) & seen_documents) for q in test.query_ids])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="*", type=int, default=list(range(10)))
    parser.add_argument("--out", default=str(RESULTS / "nudge_scifact.json"))
    args = parser.parse_args()
    enc = encoder()
    corpus, train, test = scifact(enc)
    train_vectors, test_vectors = query_vectors(enc, train), query_vectors(enc, test)
    new = groups_of(test, train.documents)
    base = score_vectors(test_vectors, test, corpus, ("ndcg@10",)).per_query["ndcg@10"]
    rows = []
    for seed in args.seeds:
        started = time.perf_counter()
        result = AdapterTrainer(model_id=enc.model_id, progress=False, seed=seed).fit_vectors(
            train, train_vectors, None, None, corpus
        )
        ours_seconds = time.perf_counter() - started
        ours = compare(result.adapter, test_vectors, test, corpus, ("ndcg@10",)).adapted.per_query["ndcg@10"]
        started = time.perf_counter()
        vectors = nudge_n(corpus, train, train_vectors, seed)
        nudge_seconds = time.perf_counter() - started
        theirs = score_vectors(test_vectors, test, corpus.with_embeddings(vectors), ("ndcg@10",)).per_query["ndcg@10"]
        row = {"seed": seed, "ours_seconds": ours_seconds, "nudge_seconds": nudge_seconds}
        for name, scores in (("ours", ours), ("nudge_n", theirs)):
            row[name] = float(scores.mean())
            row[f"{name}_seen_gain"] = float((scores - base)[~new].mean())
            row[f"{name}_new_gain"] = float((scores - base)[new].mean())
        row["nudge_documents_changed"] = int((np.abs(vectors - corpus.embeddings).max(axis=1) > 1e-6).sum())
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {}
    for name in ("ours", "nudge_n"):
        values = np.array([r[name] for r in rows])
        new_gains = np.array([r[f"{name}_new_gain"] for r in rows])
        summary[name] = {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "worst": float(values.min()),
            "seen_gain": float(np.mean([r[f"{name}_seen_gain"] for r in rows])),
            "new_gain": float(new_gains.mean()),
            "new_gain_worst": float(new_gains.min()),
            "seconds_median": float(np.median([r[f"{'ours' if name == 'ours' else 'nudge'}_seconds"] for r in rows])),
        }
        s = summary[name]
        print(
            f"{name}: {s['mean']:.4f} ± {s['std']:.4f} (worst {s['worst']:.4f}), seen {s['seen_gain']:+.4f}, "
            f"new {s['new_gain']:+.4f} (worst {s['new_gain_worst']:+.4f}), {s['seconds_median']:.1f} s median"
        )
    out = {
        "machine": machine(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base": float(base.mean()),
        "n_test": len(base),
        "n_new": int(new.sum()),
        "summary": summary,
        "runs": rows,
    }
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(out, handle, indent=2)


if __name__ == "__main__":
    main()

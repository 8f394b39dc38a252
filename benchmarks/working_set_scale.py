"""Benchmark: training on a corpus larger than memory (a working set) against holding the whole corpus.

Synthetic unit vectors (d=384, seeded) written to a ``.npy`` file block by block, so no process holds the
corpus unless it is told to; 400 queries, each the vector of one document turned by a hidden rotation plus
noise (an adapter has something to learn); 340 train, 60 held out as test queries. Each run is a fresh
process (peak memory is its ``VmHWM``):

- ``exact``: today's trainer on the whole corpus in memory (``Corpus`` with every vector; the working set
  off): every document is a negative and validation ranks against every document;
- ``working set``: the same trainer reading the file in chunks (:class:`~adapter_retrievers.working_set.NpyVectors`):
  it holds the positives, each query's base top 50 and 50,000 random documents, and validates on those.

Both use one validation split and "all" negatives for a few epochs (the config of ``corpus_scale.py``, so the
exact run stays within hours at 1M). The test queries are then ranked exactly against the whole file (one
streaming pass) for nDCG@10 of base and adapted. At 1M both run, for the comparison (epoch, blend and
test nDCG@10 chosen by each); at 10M only the working set (the whole corpus is 15 GB).

    nice -n 10 python benchmarks/working_set_scale.py [--sizes 1000000 10000000] [--exact-up-to 1000000]

Results: ``benchmarks/results/working_set_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from common import CACHE, RESULTS, machine

DIM = 384
N_QUERIES = 400

CHILD = """
import json, sys, time
import numpy as np
from adapter_retrievers import AdapterTrainer, Corpus, TrainingSet
from adapter_retrievers.evaluation import metrics_from_ranks
from adapter_retrievers.working_set import NpyVectors, top_k

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # MiB
    return float("nan")

path, mode, n_queries, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
source = NpyVectors(path)
n, dim = len(source), source.dimension
rng = np.random.default_rng(1)
targets = np.sort(rng.choice(n, size=n_queries, replace=False))
rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
docs = source.take(targets)
queries = 0.1 * docs + 0.9 * docs @ rotation.T.astype(np.float32)
queries += 0.3 * rng.standard_normal(queries.shape).astype(np.float32) / np.sqrt(dim)
everything = TrainingSet({f"q{i}": f"query {i}" for i in range(n_queries)},
                         {f"q{i}": {str(t): 1.0} for i, t in enumerate(targets)})
train, test = everything.split(0.15, seed=2)
rows = lambda ts: queries[[int(q[1:]) for q in ts.query_ids]]
config = dict(epochs=epochs, patience=epochs, require_significant_gain=False, negatives="all",
              all_negatives_limit=10**12, validation_folds=1, guard=False)
rss_before = status("VmRSS")
start = time.perf_counter()
if mode == "exact":
    corpus = Corpus([str(i) for i in range(n)], [""] * n, np.concatenate([b for _, b in source.chunks()]))
    result = AdapterTrainer(model_id="synthetic", progress=False, working_set_above=10**12, **config).fit_vectors(
        train, rows(train), None, None, corpus)
    del corpus
else:
    result = AdapterTrainer(model_id="synthetic", progress=False, **config).fit_vectors(
        train, rows(train), None, None, source)
seconds = time.perf_counter() - start
peak = status("VmHWM")

def ndcg(vectors):  # exact: each test query's rank of its document among the whole file
    found, _ = top_k(source, vectors, 10)
    ranks = []
    for q, r in zip(test.query_ids, found):
        target = int(next(iter(test.relevant[q])))
        ranks.append(np.array([list(r).index(target) if target in r else np.inf]))
    return float(metrics_from_ranks(ranks, [np.ones(1)] * len(ranks), ("ndcg@10",))["ndcg@10"].mean())

x = rows(test)
print(json.dumps({
    "mode": mode, "documents": n, "seconds": seconds, "rss_before_mib": rss_before, "peak_rss_mib": peak,
    "best_epoch": result.best_epoch, "blend": result.adapter.metadata["validation"]["blend"],
    "validation": {"base": result.decision["baseline"], "adapted": result.decision["adapted"]},
    "working_set": result.decision.get("working_set"),
    "test_ndcg@10": {"base": ndcg(x), "adapted": ndcg(result.adapter.transform(x))},
}))
"""


def write_corpus(path: Path, n: int, dim: int = DIM, block: int = 1_000_000) -> None:
    """Seeded unit vectors into a ``.npy`` file, a block at a time (the file is made once and reused)."""
    import numpy as np

    if path.exists():
        return
    tmp = path.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
    rng = np.random.default_rng(0)
    for start in range(0, n, block):
        rows = rng.standard_normal((min(block, n - start), dim), dtype=np.float32)
        out[start : start + len(rows)] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        out.flush()
    del out
    tmp.rename(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="*", type=int, default=[1_000_000, 10_000_000])
    parser.add_argument("--exact-up-to", type=int, default=1_000_000, help="also run the whole-corpus trainer")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS / "working_set_scale.json"))
    args = parser.parse_args()
    runs = []
    for n in args.sizes:
        path = CACHE / f"synthetic-{n}x{DIM}.npy"
        started = time.perf_counter()
        write_corpus(path, n)
        print(f"{n:,} documents: {path} ready ({time.perf_counter() - started:.0f} s)", flush=True)
        for mode in ("working set", "exact") if n <= args.exact_up_to else ("working set",):
            child = subprocess.run(
                [sys.executable, "-c", CHILD, str(path), mode, str(N_QUERIES), str(args.epochs)],
                capture_output=True,
                text=True,
                check=True,
            )
            run = json.loads(child.stdout.strip().splitlines()[-1])
            runs.append(run)
            print(json.dumps(run), flush=True)
    out = {
        "machine": machine(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dimension": DIM,
        "queries": N_QUERIES,
        "epochs": args.epochs,
        "runs": runs,
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

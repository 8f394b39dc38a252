"""Benchmark: harvesting a log of 1,000,000 retrievals (our JSONL), time and peak memory.

Writes a synthetic log (3 documents per retrieval, a signal for 1% of them, a few bad lines), then
harvests it in a fresh process and reports wall time, records per second and peak RSS. Memory must
stay bounded: the harvest keeps signals and the retrievals they point to, not every retrieval.

    python benchmarks/harvest_scale.py [--retrievals 1000000]

To compare two versions of the package on the same log, in one run, alternating their order per round:

    git worktree add /tmp/old 1652777
    python benchmarks/harvest_scale.py --code old=/tmp/old --code new=. --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from common import CACHE, RESULTS, machine


def write_log(path, n, n_docs=5000, signal_rate=0.01, start=0):
    """Retrievals ``r{start}`` to ``r{start + n - 1}`` (a shard of a larger log when ``start`` > 0)."""
    rng = random.Random(start)
    with open(path, "w") as handle:
        for i in range(start, start + n):
            docs = [
                {
                    "id": f"d{rng.randrange(n_docs)}",
                    "content": None,
                    "score": 0.9 - k / 10,
                    "position": k,
                    "metadata": {},
                }
                for k in range(3)
            ]
            handle.write(
                json.dumps(
                    {
                        "schema": 1,
                        "type": "retrieval",
                        "id": f"r{i}",
                        "trace_id": f"t{i}",
                        "timestamp": f"2026-01-01T00:00:{i % 60:02d}Z",
                        "query": f"user question {i}",
                        "session": f"s{i % 977}",
                        "source": "langchain",
                        "documents": docs,
                    }
                )
                + "\n"
            )
            if rng.random() < signal_rate:
                handle.write(
                    json.dumps(
                        {
                            "schema": 1,
                            "type": "signal",
                            "target": f"r{i}",
                            "kind": "click",
                            "value": 1,
                            "document_id": docs[rng.randrange(3)]["id"],
                        }
                    )
                    + "\n"
                )
            if i % 100_000 == 0:
                handle.write("{truncated line\n")


def harvest_in_child(path, n_docs, package=None):
    """Harvest ``path`` in a fresh interpreter; ``package``: a checkout whose package it imports (default: this one)."""
    code = f"""
import json, resource, time
import adapter_retrievers
from adapter_retrievers import Corpus
from adapter_retrievers.harvest import harvest
corpus = Corpus.from_texts(["text %d" % i for i in range({n_docs})], ids=["d%d" % i for i in range({n_docs})])
start = time.perf_counter()
result = harvest({str(path)!r}, corpus)
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "records": result.report.records_read, "retrievals": result.report.retrievals,
                  "pairs": result.report.pairs, "skipped": dict(result.report.skipped.skipped),
                  "package": adapter_retrievers.__file__}}))
"""
    env = dict(os.environ)
    if package is not None:
        env["PYTHONPATH"] = str(Path(package).resolve())
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def compare(path, codes, rounds):
    """Harvest the same log with each version, ``rounds`` times, alternating the order; medians and ratios."""
    runs = {name: [] for name in codes}
    for r in range(rounds):
        for name, package in list(codes.items())[:: 1 if r % 2 == 0 else -1]:
            row = harvest_in_child(path, 5000, package)
            runs[name].append(row)
            print(r, name, row, flush=True)
    summary = {}
    for name, rows in runs.items():
        summary[name] = {
            "package": str(codes[name]),
            "seconds_median": round(statistics.median(r["seconds"] for r in rows), 1),
            "seconds": [round(r["seconds"], 1) for r in rows],
            "peak_rss_mb_max": round(max(r["peak_rss_mb"] for r in rows), 1),
            "records": rows[0]["records"],
            "pairs": rows[0]["pairs"],
            "skipped": rows[0]["skipped"],
        }
    first = next(iter(summary.values()))
    for row in summary.values():
        row["time_ratio_to_first"] = round(row["seconds_median"] / first["seconds_median"], 3)
        row["peak_rss_ratio_to_first"] = round(row["peak_rss_mb_max"] / first["peak_rss_mb_max"], 3)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--retrievals", type=int, default=1_000_000)
    parser.add_argument("--code", action="append", default=[], help="NAME=PATH of a checkout to compare (repeat)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"log-{args.retrievals}.jsonl"
    start = time.perf_counter()
    write_log(path, args.retrievals)
    written = time.perf_counter() - start
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.code:
        codes = dict(item.split("=", 1) for item in args.code)
        result = {
            "machine": machine(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "retrievals": args.retrievals,
            "file_mb": round(path.stat().st_size / 2**20, 1),
            "rounds": args.rounds,
            "versions": compare(path, codes, args.rounds),
        }
        (RESULTS / "harvest_scale_compare.json").write_text(json.dumps(result, indent=2) + "\n")
        return
    rows = {}
    for n in sorted({args.retrievals // 10, args.retrievals}):
        sub = path if n == args.retrievals else CACHE / f"log-{n}.jsonl"
        if sub != path:
            write_log(sub, n)
        rows[n] = harvest_in_child(sub, 5000)
        rows[n]["file_mb"] = round(sub.stat().st_size / 2**20, 1)
        rows[n]["records_per_second"] = round(rows[n]["records"] / rows[n]["seconds"])
        print(n, rows[n], flush=True)
    result = {
        "machine": machine(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "write_seconds": round(written, 1),
        "runs": rows,
        "parent_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    (RESULTS / "harvest_scale.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

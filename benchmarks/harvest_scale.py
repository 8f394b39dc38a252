"""Benchmark: harvesting a log of 1,000,000 retrievals (our JSONL), time and peak memory.

Writes a synthetic log (3 documents per retrieval, a signal for 1% of them, a few bad lines), then
harvests it in a fresh process and reports wall time, records per second and peak RSS. Memory must
stay bounded: the harvest keeps signals and the retrievals they point to, not every retrieval.

    python benchmarks/harvest_scale.py [--retrievals 1000000]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone

from common import CACHE, RESULTS, machine


def write_log(path, n, n_docs=5000, signal_rate=0.01):
    rng = random.Random(0)
    with open(path, "w") as handle:
        for i in range(n):
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


def harvest_in_child(path, n_docs):
    code = f"""
import json, resource, time
from adapter_retrievers import Corpus
from adapter_retrievers.harvest import harvest
corpus = Corpus.from_texts(["text %d" % i for i in range({n_docs})], ids=["d%d" % i for i in range({n_docs})])
start = time.perf_counter()
result = harvest({str(path)!r}, corpus)
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "records": result.report.records_read, "retrievals": result.report.retrievals,
                  "pairs": result.report.pairs, "skipped": dict(result.report.skipped.skipped)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--retrievals", type=int, default=1_000_000)
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"log-{args.retrievals}.jsonl"
    start = time.perf_counter()
    write_log(path, args.retrievals)
    written = time.perf_counter() - start
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
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "harvest_scale.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

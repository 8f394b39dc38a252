"""Benchmark: embedding queries with the bundled all-MiniLM-L6-v2, in this process (``CachedEncoder``) against
``embed_on_ray`` (an actor pool, each actor loading its own model), in one run, on the same texts.

The texts are the bundled XQuAD-es questions, repeated with a counter so none is cached (``--texts``).
Reports texts per second of each and the rerun (everything cached: nothing embedded).

    python benchmarks/embed_ray.py [--texts 4000] [--concurrency 1 2]

Results: ``benchmarks/results/embed_ray.json``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from adapter_retrievers.encoders import DEFAULT_MODEL_ID, CachedEncoder, minilm_encoder
from common import RESULTS, machine

QUERIES = Path(__file__).resolve().parent.parent / "adapter_retrievers" / "datasets" / "xquad_es" / "queries.jsonl.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with gzip.open(QUERIES, "rt") as handle:
        questions = [json.loads(line)["text"] for line in handle if line.strip()]
    texts = [f"{questions[i % len(questions)]} ({i})" for i in range(args.texts)]

    import ray

    from adapter_retrievers.integrations.ray import embed_on_ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="warning")
    rows = {}
    folder = Path(tempfile.mkdtemp(prefix="embed-ray-"))
    try:
        start = time.perf_counter()
        CachedEncoder(minilm_encoder(), folder / "one-process", progress=False).embed_queries(texts)
        seconds = time.perf_counter() - start
        rows["one process (CachedEncoder)"] = {
            "seconds": round(seconds, 1),
            "texts_per_second": round(len(texts) / seconds),
        }
        for n in args.concurrency:
            cache = folder / f"ray-{n}"
            start = time.perf_counter()
            run = embed_on_ray(texts, cache, factory=minilm_encoder, model_id=DEFAULT_MODEL_ID, concurrency=n)
            seconds = time.perf_counter() - start
            start = time.perf_counter()
            again = embed_on_ray(texts, cache, factory=minilm_encoder, model_id=DEFAULT_MODEL_ID, concurrency=n)
            rerun = time.perf_counter() - start
            rows[f"Ray, {n} actor(s)"] = {
                "seconds": round(seconds, 1),
                "texts_per_second": round(len(texts) / seconds),
                "embedded": run.embedded,
                "rerun_seconds": round(rerun, 2),
                "rerun_embedded": again.embedded,
            }
            print(n, rows[f"Ray, {n} actor(s)"], flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    base = rows["one process (CachedEncoder)"]["seconds"]
    for row in rows.values():
        row["throughput_ratio_to_one_process"] = round(base / row["seconds"], 2)
    result = {
        "machine": machine(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": DEFAULT_MODEL_ID,
        "texts": len(texts),
        "runs": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "embed_ray.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

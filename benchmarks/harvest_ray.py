"""Benchmark: harvest of a sharded log in one process against Ray Data with 1 and 2 workers, in one run.

Writes a synthetic log in our JSONL schema (the records of ``harvest_scale.py``: 3 documents per retrieval,
a click signal on 1% of retrievals, a truncated line every 100,000) as ``--shards`` files, then harvests
the folder in a fresh process for each engine: ``harvest()``, and ``harvest_on_ray()`` on a local Ray
(``num_cpus=2``) with ``workers=1`` and ``workers=2``, the order reversed in every other round; and, as the
hardware's bound, two plain ``harvest()`` processes at once, each on every other file ("2 processes, no
Ray": what two cores give without Ray's costs; their pair and record counts must add up). Each
run prints a digest of its pairs, hard negatives, query info and report counts; the script asserts the
digests are equal, and reports time, records per second, ratios to the single process, the driver's
peak RSS, each Ray worker process's peak RSS (``VmHWM``) and the CPU seconds of every process by kind: the
driver, the task workers by their title, Ray's actors, the raylet, the GCS and the rest (where two cores go).

    python benchmarks/harvest_ray.py --retrievals 1000000 --shards 16
    python benchmarks/harvest_ray.py --retrievals 20000000 --shards 64   # ~8.4 GB of JSONL on disk
    python benchmarks/harvest_ray.py --retrievals 20000000 --shards 64 --engines "one process" "Ray, 2 workers"

Results: ``benchmarks/results/harvest_ray_<retrievals>.json`` (or ``--out NAME``: ``NAME.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from common import CACHE, RESULTS, machine
from harvest_scale import write_log

N_DOCS = 5000

CHILD = """
import hashlib, json, os, resource, sys, time
from pathlib import Path
from adapter_retrievers import Corpus
from adapter_retrievers.harvest import harvest

folder, engine, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
part, parts = (int(sys.argv[4]), int(sys.argv[5])) if len(sys.argv) > 5 else (0, 1)
files = sorted(Path(folder).glob("part-*.jsonl"))[part::parts] if parts > 1 else folder
corpus = Corpus.from_texts(["text %d" % i for i in range({n_docs})], ids=["d%d" % i for i in range({n_docs})])
started = 0.0
if engine == "ray":
    import ray
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    started = time.perf_counter() - start
    from adapter_retrievers.integrations.ray import harvest_on_ray
    run = lambda: harvest_on_ray(folder, corpus, workers=workers)
else:
    run = lambda: harvest(files, corpus)
start = time.perf_counter()
result = run()
seconds = time.perf_counter() - start
workers_rss = []
own = resource.getrusage(resource.RUSAGE_SELF)
cpu = {{"driver": own.ru_utime + own.ru_stime}}  # CPU seconds by process (Ray's: those started by this run)
if engine == "ray":
    tick = os.sysconf("SC_CLK_TCK")
    mine = int(Path(f"/proc/{{os.getpid()}}/stat").read_text().rsplit(")", 1)[1].split()[19])
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{{pid}}/cmdline").read_bytes()
            status = Path(f"/proc/{{pid}}/status").read_text()
            stat = Path(f"/proc/{{pid}}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if b"ray" not in cmdline or int(stat[19]) < mine:  # not Ray's, or left from an earlier run
            continue
        # a worker's title is "ray::IDLE" or "ray::<task or actor>" (setproctitle); others by their program
        title = cmdline.split(b"\\0")[0].decode(errors="replace")
        kind = title.split("(")[0] if title.startswith("ray::") else Path(title.split()[0]).name
        if kind in ("python", "python3"):  # a Python program of Ray's: by its script
            args = cmdline.decode(errors="replace").split("\\0")[1:]
            kind = next((Path(a).name for a in args if a.endswith(".py")), kind)
        cpu[kind] = cpu.get(kind, 0.0) + (int(stat[11]) + int(stat[12])) / tick
        if title.startswith("ray::") or b"default_worker.py" in cmdline:
            hwm = next(line for line in status.splitlines() if line.startswith("VmHWM"))
            workers_rss.append(int(hwm.split()[1]) / 1024)
ts, report = result.training_set, result.report
content = [list(ts.queries.items()), sorted((q, sorted(d.items())) for q, d in ts.relevant.items()),
           sorted((q, sorted(d)) for q, d in ts.negatives.items()), sorted(result.query_info.items()),
           report.records_read, report.retrievals, report.signals, report.pairs, report.negatives,
           sorted(report.skipped.skipped.items()), sorted(report.merged.skipped.items())]
print(json.dumps({{"seconds": seconds, "ray_init_seconds": started,
                  "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "worker_peak_rss_mb": sorted(workers_rss, reverse=True),
                  "cpu_seconds": {{k: round(v, 1) for k, v in cpu.items()}},
                  "records": report.records_read, "retrievals": report.retrievals, "pairs": report.pairs,
                  "skipped": dict(report.skipped.skipped),
                  "digest": hashlib.sha256(json.dumps(content).encode()).hexdigest()}}))
"""

SPLIT = "2 processes, no Ray"  # the hardware's bound: two plain harvests at once, each on every other file
ENGINES = {"one process": ("single", 1), "Ray, 1 worker": ("ray", 1), "Ray, 2 workers": ("ray", 2), SPLIT: ("split", 2)}


def write_shards(folder: Path, n: int, shards: int) -> float:
    """The log as ``shards`` files of consecutive retrievals; returns the size in MB (written once, then kept)."""
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / "_COMPLETE"
    if not done.exists():
        per = -(-n // shards)
        for k in range(shards):
            write_log(folder / f"part-{k:04d}.jsonl", min(per, n - k * per), N_DOCS, start=k * per)
        done.write_text(str(n))
    return sum(p.stat().st_size for p in folder.glob("part-*.jsonl")) / 2**20


def child_command(folder: Path, engine: str, workers: int, *part: int) -> list[str]:
    """The fresh process that harvests ``folder`` (or its ``part = (k, parts)``: every parts-th file from k)."""
    return [sys.executable, "-c", CHILD.format(n_docs=N_DOCS), str(folder), engine, str(workers), *map(str, part)]


def run_child(folder: Path, engine: str, workers: int) -> dict:
    if engine == "split":
        return run_split(folder, workers)
    out = subprocess.run(
        child_command(folder, engine, workers),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_split(folder: Path, parts: int) -> dict:
    """``parts`` plain ``harvest()`` processes at once, each on every ``parts``-th file: what the cores give
    without Ray (the synthetic log keeps each retrieval's signals in its own file, so the parts add up)."""
    children = [
        subprocess.Popen(child_command(folder, "single", 1, k, parts), stdout=subprocess.PIPE, text=True)
        for k in range(parts)
    ]
    rows = [json.loads(child.communicate()[0].strip().splitlines()[-1]) for child in children]
    if any(child.returncode for child in children):
        raise RuntimeError("a plain harvest process failed")
    return {
        "seconds": max(row["seconds"] for row in rows),  # the slower part's harvest(), timed as the others
        "ray_init_seconds": 0.0,
        "driver_peak_rss_mb": max(row["driver_peak_rss_mb"] for row in rows),
        "worker_peak_rss_mb": [],
        "cpu_seconds": {f"process {k + 1}": row["cpu_seconds"]["driver"] for k, row in enumerate(rows)},
        **{key: sum(row[key] for row in rows) for key in ("records", "retrievals", "pairs")},
        "skipped": {},
        "digest": None,  # each part's own pairs: compared by their counts below
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--retrievals", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--engines", nargs="*", default=list(ENGINES), choices=list(ENGINES), metavar="ENGINE")
    parser.add_argument("--out", help="results file name in benchmarks/results/, no suffix (default: by size)")
    args = parser.parse_args()
    if "one process" not in args.engines:
        parser.error("the engines are compared with 'one process': include it")
    folder = CACHE / f"sharded-log-{args.retrievals}-{args.shards}"
    start = time.perf_counter()
    size_mb = write_shards(folder, args.retrievals, args.shards)
    print(f"log: {folder} ({size_mb:.0f} MB, written or found in {time.perf_counter() - start:.0f} s)", flush=True)
    runs: dict[str, list[dict]] = {name: [] for name in args.engines}
    for r in range(args.rounds):
        for name in args.engines[:: 1 if r % 2 == 0 else -1]:
            row = run_child(folder, *ENGINES[name])
            runs[name].append(row)
            print(r, name, {k: v for k, v in row.items() if k != "skipped"}, flush=True)
    digests = {row["digest"] for name, rows in runs.items() if name != SPLIT for row in rows}
    assert len(digests) == 1, "the engines' pairs, query info or report counts differ"
    first = runs["one process"][0]
    for row in runs.get(SPLIT, []):
        assert (row["records"], row["pairs"]) == (first["records"], first["pairs"]), "the parts do not add up"
    summary = {}
    for name, rows in runs.items():
        seconds = statistics.median(row["seconds"] for row in rows)
        summary[name] = {
            "seconds": [round(row["seconds"], 1) for row in rows],
            "seconds_median": round(seconds, 1),
            "records_per_second": round(rows[0]["records"] / seconds),
            "ray_init_seconds": round(max(row["ray_init_seconds"] for row in rows), 1),
            "driver_peak_rss_mb": round(max(row["driver_peak_rss_mb"] for row in rows), 1),
            "worker_peak_rss_mb": [round(v, 1) for v in max((row["worker_peak_rss_mb"] for row in rows), key=len)],
            "cpu_seconds": rows[0].get("cpu_seconds", {}),
        }
    single = summary["one process"]["seconds_median"]
    for row in summary.values():
        row["throughput_ratio_to_one_process"] = round(single / row["seconds_median"], 2)
    result = {
        "machine": machine(),
        "load_average_at_end": os.getloadavg(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "retrievals": args.retrievals,
        "shards": args.shards,
        "log_mb": round(size_mb, 1),
        "records": first["records"],
        "pairs": first["pairs"],
        "skipped": first["skipped"],
        "identical_results": True,
        "rounds": args.rounds,
        "engines": summary,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{args.out or f'harvest_ray_{args.retrievals}'}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

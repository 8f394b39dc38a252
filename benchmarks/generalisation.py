"""Benchmark: does an adapter help on documents no training query was about, and with little data?

An adapter gains in two ways: it learns *which documents* past queries wanted (helps only queries
about those documents) and *how this application's users ask* (carries over to new documents). The
splits below separate the two. They were fixed before any result was looked at:

- ``scifact-test``: SciFact train qrels (809 queries) -> the 300 test queries, reported overall and
  split into "seen" (a relevant document was a training positive) and "new" (none was).
- ``scifact-train-by-doc``: SciFact train qrels split by document (``split(1/3, seed=0,
  by="document")``: groups of queries sharing a relevant document stay together); the held-out third
  is all "new".
- ``xquad-<lang>`` (es, de, zh, ar): questions grouped by paragraph, a third of the questions held out
  with their whole paragraphs (``split(1/3, seed=0, by="document")``), 2/3 train: all "new".
- ``small``: 50 and 100 SciFact train pairs (``sample_pairs``, subsets 0-2) -> SciFact test.

Every variant is fitted once per seed (``--seeds``, default 0 1 2: the trainer's seed, which moves its
validation split, initialisation and negatives) from cached vectors with ``fit_vectors``; rows are
means over seeds with the spread (std). Results: ``benchmarks/results/generalisation.json``.

    python benchmarks/generalisation.py                       # the package default on every split
    python benchmarks/generalisation.py --variants all        # every variant below (about 30 min, 2 cores)
    python benchmarks/generalisation.py --config '{"bias": false}' --name "no bias"
    python benchmarks/generalisation.py --variants ablation --splits scifact-test xquad-es xquad-de
    python benchmarks/generalisation.py --curve               # learning curve, seen/new gains per size
    python benchmarks/generalisation.py --timing --against 085b4f2   # fit time, and against another revision
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from adapter_retrievers import AdapterTrainer, Corpus, TrainingSet, compare
from adapter_retrievers.evaluation import paired_bootstrap
from adapters_scifact import VARIANTS as SCIFACT_VARIANTS
from common import DATA, RESULTS, embedded_corpus, encoder, machine, query_vectors, scifact

LANGUAGES = ("es", "de", "zh", "ar")
SMALL_SIZES = (50, 100)

# what the package default was before issue 10 (kept to show what changed)
BEFORE = {
    "validation_split": "query",
    "cv_below_queries": 0,
    "bias": True,
    "blend": (1.0,),
    "consistency_weight": 0.0,
    "identity_weight": 0.0,
    "refit": False,
}

# name -> TrainingConfig overrides; {} is the package default
VARIANTS: dict[str, dict] = {
    "default": {},
    "before: linear, InfoNCE, all negatives, validation by query": BEFORE,
}
# the SciFact ablation rows (kinds, losses, negatives), each on top of today's default, so every row gets
# the seen/new columns: `--variants ablation`
ABLATION = {f"ablation: {name}": overrides for name, overrides in SCIFACT_VARIANTS.items() if overrides}
VARIANTS.update(ABLATION)
CURVE_SIZES = (25, 50, 100, 200, 400, 919)


@dataclass
class Split:
    name: str
    corpus: Corpus
    train: TrainingSet
    train_vectors: np.ndarray
    test: TrainingSet
    test_vectors: np.ndarray
    extra: dict = field(default_factory=dict)


def _rows(queries: TrainingSet, vectors: np.ndarray, subset: TrainingSet) -> np.ndarray:
    index = {q: i for i, q in enumerate(queries.query_ids)}
    return vectors[[index[q] for q in subset.query_ids]]


def load_splits(enc, names) -> list[Split]:
    splits = []
    need_scifact = any(n.startswith("scifact") or n == "small" for n in names)
    if need_scifact:
        corpus, train, test = scifact(enc)
        train_vectors, test_vectors = query_vectors(enc, train), query_vectors(enc, test)
        if "scifact-test" in names:
            splits.append(Split("scifact-test", corpus, train, train_vectors, test, test_vectors))
        if "scifact-train-by-doc" in names:
            rest, held = train.split(1 / 3, seed=0, by="document")
            splits.append(
                Split(
                    "scifact-train-by-doc",
                    corpus,
                    rest,
                    _rows(train, train_vectors, rest),
                    held,
                    _rows(train, train_vectors, held),
                )
            )
        if "small" in names:
            for size in SMALL_SIZES:
                for subset_seed in range(3):
                    sub = train.sample_pairs(size, seed=subset_seed)
                    splits.append(
                        Split(
                            f"small-{size}",
                            corpus,
                            sub,
                            _rows(train, train_vectors, sub),
                            test,
                            test_vectors,
                            {"subset": subset_seed},
                        )
                    )
    for lang in LANGUAGES:
        if f"xquad-{lang}" not in names:
            continue
        folder = DATA / "xquad" / lang
        corpus = embedded_corpus(Corpus.from_beir(folder), enc)
        queries = TrainingSet.from_beir(folder, "test")
        vectors = query_vectors(enc, queries)
        rest, held = queries.split(1 / 3, seed=0, by="document")
        splits.append(
            Split(f"xquad-{lang}", corpus, rest, _rows(queries, vectors, rest), held, _rows(queries, vectors, held))
        )
    return splits


def run_variant(name: str, overrides: dict, splits: list[Split], seeds, model_id: str) -> dict:
    """Fit once per seed (small data: once per subset, seed = subset) and aggregate per split."""
    per_split: dict[str, list[dict]] = {}
    diffs: dict[str, list[np.ndarray]] = {}
    for split in splits:
        run_seeds = [split.extra["subset"]] if "subset" in split.extra else seeds
        for seed in run_seeds:
            trainer = AdapterTrainer(model_id=model_id, progress=False, **{**overrides, "seed": seed})
            started, cpu_started = time.perf_counter(), time.process_time()
            result = trainer.fit_vectors(split.train, split.train_vectors, None, None, split.corpus)
            seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
            report = compare(
                result.adapter, split.test_vectors, split.test, split.corpus, seen_documents=result.training_documents
            )
            row = {
                "seed": seed,
                "base": report.means("ndcg@10")[0],
                "adapted": report.means("ndcg@10")[1],
                "gain": report.gain(),
                "gain_ci": list(report.interval("ndcg@10")),
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "kept": result.improved,
                "epoch": result.best_epoch,
                "blend": result.adapter.metadata["validation"].get("blend"),
                "negatives": result.adapter.metadata["validation"].get("negatives"),
                "decision": result.describe_decision(),
            }
            # the same adapter without its per-query guard: what the guard costs (or saves) on this split
            plain = result.adapter.with_guard(None)
            unguarded = compare(
                plain, split.test_vectors, split.test, split.corpus, seen_documents=result.training_documents
            )
            row["adapted_unguarded"] = unguarded.means("ndcg@10")[1]
            row["new_gain_unguarded"] = unguarded.gain("ndcg@10", "new") if unguarded.n_queries_in("new") else None
            for group in ("seen", "new"):
                n = report.n_queries_in(group)
                row[f"n_{group}"] = n
                row[f"{group}_base"] = report.means("ndcg@10", group)[0] if n else None
                row[f"{group}_gain"] = report.gain("ndcg@10", group) if n else None
            per_split.setdefault(split.name, []).append(row)
            diffs.setdefault(split.name, []).append(
                report.adapted.per_query["ndcg@10"] - report.baseline.per_query["ndcg@10"]
            )
    summary = {}
    for split_name, rows in per_split.items():
        entry = {"runs": rows, "n_test": len(diffs[split_name][0])}
        keys = ("base", "adapted", "gain", "seen_gain", "new_gain", "seconds", "cpu_seconds", "adapted_unguarded")
        for key in (*keys, "new_gain_unguarded"):
            values = [r[key] for r in rows if r[key] is not None]
            if values:
                entry[key] = float(np.mean(values))
                entry[f"{key}_std"] = float(np.std(values))
        for group in ("seen", "new"):
            entry[f"n_{group}"] = rows[0][f"n_{group}"]
        # the mean per-query gain over runs: its paired-bootstrap CI (for small data, "mean of 3 subsets")
        entry["mean_gain_ci"] = list(paired_bootstrap(np.zeros(entry["n_test"]), np.mean(diffs[split_name], axis=0)))
        summary[split_name] = entry
        print(
            f"{name[:40]:<40} {split_name:<22} base {entry['base']:.4f} adapted {entry['adapted']:.4f} "
            f"± {entry['adapted_std']:.4f}  gain {entry['gain']:+.4f}"
            + (f"  seen {entry['seen_gain']:+.4f} (n={entry['n_seen']})" if "seen_gain" in entry else "")
            + (
                f"  new {entry['new_gain']:+.4f} ± {entry['new_gain_std']:.4f} (n={entry['n_new']})"
                if "new_gain" in entry
                else ""
            )
            + f"  CI {entry['mean_gain_ci'][0]:+.3f}..{entry['mean_gain_ci'][1]:+.3f}  {entry['seconds']:.1f}s"
            + f" (cpu {entry['cpu_seconds']:.1f}s)",
            flush=True,
        )
    return {"variant": name, "config": overrides, "splits": summary}


def _cell(entry: dict | None, key: str, absolute: bool = False) -> str:
    if entry is None or key not in entry:
        return ""
    value = f"{entry[key]:.4f}" if absolute else f"{entry[key]:+.3f}"
    return f"{value} ± {entry[key + '_std']:.3f}"


def markdown(results: dict) -> str:
    """The table for docs/benchmarks.md: means ± std over seeds (small data: over subsets)."""
    columns = [
        ("SciFact test, all", "scifact-test", "adapted", True),
        ("seen docs gain", "scifact-test", "seen_gain", False),
        ("new docs gain", "scifact-test", "new_gain", False),
        ("SciFact train by doc, gain", "scifact-train-by-doc", "new_gain", False),
        *[(f"XQuAD-{lang} new paragraphs, gain", f"xquad-{lang}", "new_gain", False) for lang in LANGUAGES],
        *[(f"{n} pairs, gain", f"small-{n}", "gain", False) for n in SMALL_SIZES],
    ]
    present = [c for c in columns if any(c[1] in v["splits"] for v in results["variants"])]
    lines = [
        "| variant | " + " | ".join(c[0] for c in present) + " | train s (cpu s), SciFact |",
        "|---|" + "---|" * (len(present) + 1),
    ]
    for variant in results["variants"]:
        cells = [_cell(variant["splits"].get(split), key, absolute) for _, split, key, absolute in present]
        timing = variant["splits"].get("scifact-test")
        seconds = f"{timing['seconds']:.1f} ({timing['cpu_seconds']:.1f})" if timing else ""
        lines.append(f"| {variant['variant']} | " + " | ".join(cells) + f" | {seconds} |")
    return "\n".join(lines)


def timing(enc) -> dict:
    """Seconds to fit on all SciFact train pairs from cached vectors, side by side in one process: the default
    (runs in parallel threads, one torch thread each), without the race between negatives options, one run at
    a time, without the refit, with torch's own thread count, and the default before issue 10."""
    import torch

    corpus, train, _ = scifact(enc)
    vectors = query_vectors(enc, train)
    out = {"torch_default_threads": torch.get_num_threads()}
    runs = (
        ("default", {}),
        ("default, race_after=0", {"race_after": 0}),
        ("default, parallel_runs=1", {"parallel_runs": 1}),
        ("default, refit=False", {"refit": False}),
        ("default, threads=None", {"threads": None}),
        ("before", {**BEFORE, "negatives": "all"}),
    )
    for name, overrides in runs:
        trainer = AdapterTrainer(model_id=enc.model_id, progress=False, **overrides)
        started, cpu_started = time.perf_counter(), time.process_time()
        result = trainer.fit_vectors(train, vectors, None, None, corpus)
        out[name] = {
            "seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu_started,
            "epochs_run": len(result.history) - 1,
            "best_epoch": result.best_epoch,
        }
        print(f"timing {name}: {out[name]}", flush=True)
    for name, _ in runs[1:]:
        out[f"{name} / default"] = out[name]["seconds"] / out["default"]["seconds"]
    return out


def fit_seconds() -> float:
    """Wall seconds of one default fit on SciFact train from cached vectors (``--fit-once``, for ``--against``)."""
    enc = encoder()
    corpus, train, _ = scifact(enc)
    vectors = query_vectors(enc, train)
    trainer = AdapterTrainer(model_id=enc.model_id, progress=False)
    started = time.perf_counter()
    trainer.fit_vectors(train, vectors, None, None, corpus)
    return time.perf_counter() - started


def timing_against(revision: str, repeats: int) -> dict:
    """The default SciFact fit with this tree's package and with ``revision``'s, alternating in fresh processes
    (same machine, same minutes: this machine's speed drifts by 20% over an hour), and the ratio of medians."""
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    here = Path(__file__).resolve().parent
    seconds: dict[str, list[float]] = {"this tree": [], revision: []}
    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "tree"
        git = ["git", "-C", str(root), "worktree"]
        subprocess.run([*git, "add", "--detach", str(other), revision], check=True, capture_output=True)
        try:
            for _ in range(repeats):
                for name, source in (("this tree", root), (revision, other)):
                    env = {**os.environ, "PYTHONPATH": f"{source}{os.pathsep}{here}", "OMP_NUM_THREADS": "1"}
                    run = subprocess.run(
                        [sys.executable, __file__, "--fit-once"], env=env, capture_output=True, text=True, check=True
                    )
                    seconds[name].append(float(run.stdout.split()[-1]))
                    print(f"timing {name}: {seconds[name][-1]:.2f} s", flush=True)
        finally:
            subprocess.run([*git, "remove", "--force", str(other)], check=False, capture_output=True)
    medians = {name: float(np.median(values)) for name, values in seconds.items()}
    return {
        "against": revision,
        "seconds": seconds,
        "median_seconds": medians,
        "this tree / revision": medians["this tree"] / medians[revision],
    }


def curve(enc, seeds) -> dict:
    """The SciFact learning curve of the default, with seen/new gains (3 random subsets per size)."""
    from adapter_retrievers import learning_curve
    from adapter_retrievers.plots import plot_learning_curve

    corpus, train, test = scifact(enc)
    rows = learning_curve(
        AdapterTrainer(model_id=enc.model_id, progress=False),
        train,
        corpus,
        test,
        sizes=CURVE_SIZES,
        seeds=seeds,
        test_vectors=query_vectors(enc, test),
        train_vectors=query_vectors(enc, train),
    )
    plot_learning_curve(
        rows, RESULTS / "scifact_learning_curve.png", title=f"SciFact test, {enc.model_id}", overwrite=True
    )  # this benchmark's own result, redrawn by every run
    for r in rows:
        print(
            f"curve: {r['pairs']:.0f} pairs -> nDCG@10 {r['ndcg@10']:.4f} ± {r['std']:.4f}, gain {r['gain']:+.4f},"
            f" seen {r['seen_gain']:+.4f} (n={r['n_seen']:.0f}), new {r['new_gain']:+.4f} (n={r['n_new']:.0f})",
            flush=True,
        )
    return {"learning_curve": rows, "sizes": list(CURVE_SIZES), "seeds": list(seeds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="*", default=["default"], help="names (substring) or 'all'")
    parser.add_argument("--config", help="JSON TrainingConfig overrides for one extra variant")
    parser.add_argument("--name", default="custom", help="name of the --config variant")
    parser.add_argument(
        "--splits",
        nargs="*",
        default=["scifact-test", "scifact-train-by-doc", *[f"xquad-{lang}" for lang in LANGUAGES], "small"],
    )
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default=str(RESULTS / "generalisation.json"))
    parser.add_argument("--timing", action="store_true", help="only time the SciFact fit (default, threads, before)")
    parser.add_argument("--curve", action="store_true", help="only the SciFact learning curve of the default")
    parser.add_argument("--against", help="with --timing: also time a git revision's trainer, alternating runs")
    parser.add_argument("--repeats", type=int, default=3, help="fits per tree for --against")
    parser.add_argument("--fit-once", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fit_once:
        print(f"{fit_seconds():.4f}")
        return
    if args.curve:
        enc = encoder()
        out = {"model": enc.model_id, "machine": machine(), "date": datetime.now(timezone.utc).isoformat()}
        out.update(curve(enc, args.seeds))
        (RESULTS / "generalisation_curve.json").write_text(json.dumps(out, indent=2, default=float) + "\n")
        return
    if args.timing:
        result = {"machine": machine(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        result.update(timing(encoder()))
        if args.against:
            result["against"] = timing_against(args.against, args.repeats)
        (RESULTS / "generalisation_timing.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result))
        return

    variants: dict[str, dict] = {}
    if args.config:
        variants[args.name] = json.loads(args.config)
    else:
        for name, overrides in VARIANTS.items():
            if "all" in args.variants or any(v in name for v in args.variants):
                variants[name] = overrides
    enc = encoder()
    splits = load_splits(enc, args.splits)
    results = {
        "model": enc.model_id,
        "machine": machine(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seeds": args.seeds,
        "metric": "ndcg@10",
        "splits": {
            s.name: {"train_queries": len(s.train), "train_pairs": s.train.n_pairs, "test_queries": len(s.test)}
            for s in splits
        },
        "variants": [run_variant(n, o, splits, args.seeds, enc.model_id) for n, o in variants.items()],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a" if args.out.endswith(".jsonl") else "w") as handle:
        handle.write(json.dumps(results, default=float) + "\n")
    print(markdown(results))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

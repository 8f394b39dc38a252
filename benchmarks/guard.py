"""Benchmark: the per-query guard, on the population an adapter was trained for and on others.

An adapter trained on one population of users (here: Spanish questions about English XQuAD paragraphs)
is served to queries of other populations (the same questions in German, Chinese, Arabic, Russian, Greek
and English). Without a guard it applies its Spanish-specific map to everyone; with the guard
(``TrainingConfig.guard``, on by default) a query far from the training queries gets the base vector.

Per seed (the trainer's seed and the split of the Spanish questions, half for training by query), the
held-out question ids are scored in every language against the English corpus: nDCG@10 of the base
model, of the adapter without its guard and of the adapter with it, and the mean guard weight. Also the
cost of ``transform`` with and without the guard, per query (single vectors and batches of 64).

And the registry's population check (:class:`~adapter_retrievers.guards.PopulationCheck`, default settings)
on traffic that mixes the trained-for population with another: every held-out question asked once, in
Spanish with probability ``share`` and otherwise in German (or Chinese), in a random order (5 orders per
share); nDCG@10 gain over the base model of the guarded adapter on every query, and as served with the check
(the base model for the queries it steps aside), and the share of the Spanish questions it served.

    python benchmarks/guard.py [--seeds 0 1 2]
    python benchmarks/guard.py --scifact --seeds 0 1 2 3 4 5 6 7 8 9   # the check on in-distribution traffic

``--scifact``: only the population check's cost on the trained-for population: the default fitted on SciFact
train per seed, its 300 test queries served through a fresh check in file order and in 5 random orders.

Results: ``benchmarks/results/guard.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone

import numpy as np

from adapter_retrievers import AdapterTrainer, Corpus, TrainingSet, compare
from adapter_retrievers.evaluation import score_vectors
from adapter_retrievers.guards import PopulationCheck
from adapter_retrievers.registry import AdapterRegistry, adapt_query_vector
from common import DATA, RESULTS, embedded_corpus, encoder, machine, query_vectors, scifact

TRAINED_ON = "es"
SERVED_TO = ("es", "de", "zh", "ar", "ru", "el", "en")


def latency(adapter, vectors: np.ndarray, repeats: int = 2000) -> dict[str, float]:
    """Microseconds per query of ``transform``: one vector at a time and batches of 64."""
    out = {}
    for name, candidate in (("guard", adapter), ("no guard", adapter.with_guard(None))):
        single = vectors[0]
        started = time.perf_counter()
        for _ in range(repeats):
            candidate.transform(single)
        out[f"{name}, single query µs"] = (time.perf_counter() - started) / repeats * 1e6
        batch = vectors[:64]
        started = time.perf_counter()
        for _ in range(repeats // 10):
            candidate.transform(batch)
        out[f"{name}, batch of 64, µs per query"] = (time.perf_counter() - started) / (repeats // 10) / 64 * 1e6
    for name, check in (("registry with population check", PopulationCheck()), ("registry without", None)):
        registry = AdapterRegistry(adapter.base_model, adapter.dimension, {"k": adapter}, population=check)
        started = time.perf_counter()
        for i in range(repeats):
            adapt_query_vector(registry, "k", vectors[i % len(vectors)])  # the wrappers' path, one query
        out[f"{name}, single query µs"] = (time.perf_counter() - started) / repeats * 1e6
    return out


SHARES = (1.0, 0.9, 0.75, 0.5, 0.25, 0.1, 0.0)


def gains_and_weights(adapter, x: np.ndarray, queries: TrainingSet, corpus: Corpus) -> tuple[np.ndarray, np.ndarray]:
    """Per query (rows of ``x``): the guarded adapter's nDCG@10 gain over the base model, and its guard weight."""
    base = score_vectors(x, queries, corpus, ("ndcg@10",)).per_query["ndcg@10"]
    gain = score_vectors(adapter.transform(x), queries, corpus, ("ndcg@10",)).per_query["ndcg@10"] - base
    return gain, adapter.guard.weight(x) if adapter.guard is not None else np.ones(len(base))


def mixed_traffic(adapter, corpus: Corpus, questions: dict, rows, held: TrainingSet, seed: int) -> dict:
    """Spanish questions mixed with another language's, served in random orders through a population check."""
    ids = held.query_ids
    per_query, weights = {}, {}
    for lang in (TRAINED_ON, "de", "zh"):
        test = questions[lang].subset(ids)
        per_query[lang], weights[lang] = gains_and_weights(adapter, rows(lang, test), test, corpus)
    rng = np.random.default_rng(seed)
    out = {}
    for other in ("de", "zh"):
        for share in SHARES:
            guard_only, checked, spanish_served = [], [], []
            for _ in range(5):
                spanish = rng.random(len(ids)) < share
                order = rng.permutation(len(ids))
                gain = np.where(spanish, per_query[TRAINED_ON], per_query[other])[order]
                weight = np.where(spanish, weights[TRAINED_ON], weights[other])[order]
                served = PopulationCheck().replay(weight)
                guard_only.append(gain.mean())
                checked.append(np.where(served, gain, 0.0).mean())
                if spanish.any():
                    spanish_served.append(served[spanish[order]].mean())
            out[f"{other} {share}"] = {
                "other": other,
                "spanish_share": share,
                "guard": float(np.mean(guard_only)),
                "guard_and_population_check": float(np.mean(checked)),
                "spanish_served_share": float(np.mean(spanish_served)) if spanish_served else None,
            }
    return out


def scifact_cost(seeds: list[int]) -> dict:
    """nDCG@10 of the guarded default on SciFact test, on every query and as served through a population check."""
    enc = encoder()
    corpus, train, test = scifact(enc)
    x_train, x_test = query_vectors(enc, train), query_vectors(enc, test)
    runs = []
    for seed in seeds:
        adapter = (
            AdapterTrainer(model_id=enc.model_id, progress=False, seed=seed)
            .fit_vectors(train, x_train, None, None, corpus)
            .adapter
        )
        gain, weights = gains_and_weights(adapter, x_test, test, corpus)
        rng = np.random.default_rng(seed)
        orders = [np.arange(len(gain))] + [rng.permutation(len(gain)) for _ in range(5)]
        served = [PopulationCheck().replay(weights[order]) for order in orders]
        run = {
            "seed": seed,
            "mean_weight": float(weights.mean()),
            "gain": float(gain.mean()),
            "gain_as_served": [float(np.where(s, gain[order], 0.0).mean()) for s, order in zip(served, orders)],
            "queries_stepped_aside": [int((~s).sum()) for s in served],
        }
        print(f"scifact seed {seed}: {run}", flush=True)
        runs.append(run)
    costs = [min(r["gain_as_served"]) - r["gain"] for r in runs]
    return {
        "machine": machine(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seeds": seeds,
        "worst_cost_over_orders_mean": float(np.mean(costs)),
        "worst_cost_over_orders_worst_seed": float(min(costs)),
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default=None, help="default: guard.json (guard_scifact.json with --scifact)")
    parser.add_argument("--scifact", action="store_true", help="only the population check's cost on SciFact")
    args = parser.parse_args()
    if args.scifact:
        result = scifact_cost(args.seeds)
        with open(args.out or RESULTS / "guard_scifact.json", "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
        return
    enc = encoder()
    corpus = embedded_corpus(Corpus.from_beir(DATA / "xquad" / "en"), enc)
    questions = {lang: TrainingSet.from_beir(DATA / "xquad" / lang, "test") for lang in SERVED_TO}
    vectors = {
        lang: dict(zip(ts.query_ids, enc.embed_queries([ts.queries[q] for q in ts.query_ids])))
        for lang, ts in questions.items()
    }

    def rows(lang: str, ts: TrainingSet) -> np.ndarray:
        return np.stack([vectors[lang][q] for q in ts.query_ids])

    runs = []
    for seed in args.seeds:
        train, held = questions[TRAINED_ON].split(0.5, seed=seed, by="query")
        result = AdapterTrainer(model_id=enc.model_id, progress=False, seed=seed).fit_vectors(
            train, rows(TRAINED_ON, train), None, None, corpus
        )
        adapter = result.adapter
        run = {"seed": seed, "decision": result.describe_decision(), "languages": {}}
        for lang in SERVED_TO:
            test = questions[lang].subset(held.query_ids)
            x = rows(lang, test)
            guarded = compare(adapter, x, test, corpus, ("ndcg@10",))
            plain = compare(adapter.with_guard(None), x, test, corpus, ("ndcg@10",))
            run["languages"][lang] = {
                "n": len(test),
                "base": guarded.means()[0],
                "no_guard": plain.means()[1],
                "guard": guarded.means()[1],
                "mean_weight": float(adapter.guard.weight(x).mean()) if adapter.guard is not None else 1.0,
            }
            r = run["languages"][lang]
            print(
                f"seed {seed} {TRAINED_ON}->{lang}: base {r['base']:.4f}  no guard {r['no_guard'] - r['base']:+.4f}"
                f"  guard {r['guard'] - r['base']:+.4f}  (mean weight {r['mean_weight']:.2f})",
                flush=True,
            )
        run["mixed_traffic"] = mixed_traffic(adapter, corpus, questions, rows, held, seed)
        for cell in run["mixed_traffic"].values():
            print(f"seed {seed} mixed traffic: {cell}", flush=True)
        run["latency"] = latency(adapter, rows(TRAINED_ON, held))
        print(f"seed {seed} latency: {run['latency']}", flush=True)
        runs.append(run)
    summary = {}
    for lang in SERVED_TO:
        cells = [r["languages"][lang] for r in runs]
        summary[lang] = {
            key: float(np.mean([c[key] - (c["base"] if key != "mean_weight" else 0) for c in cells]))
            for key in ("no_guard", "guard", "mean_weight")
        }
        summary[lang]["guard_worst"] = float(min(c["guard"] - c["base"] for c in cells))
        summary[lang]["no_guard_worst"] = float(min(c["no_guard"] - c["base"] for c in cells))
    mixed = {}
    for name in runs[0]["mixed_traffic"]:
        cells = [r["mixed_traffic"][name] for r in runs]
        mixed[name] = {key: cells[0][key] for key in ("other", "spanish_share")}
        for key in ("guard", "guard_and_population_check", "spanish_served_share"):
            values = [c[key] for c in cells if c[key] is not None]
            mixed[name][key] = float(np.mean(values)) if values else None
            mixed[name][f"{key} worst"] = float(min(values)) if values else None
    out = {
        "mixed_traffic": mixed,
        "machine": machine(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "trained_on": TRAINED_ON,
        "seeds": args.seeds,
        "summary_gain_over_base": summary,
        "runs": runs,
    }
    with open(args.out or RESULTS / "guard.json", "w", encoding="utf-8") as handle:
        json.dump(out, handle, indent=2)
    for lang, s in summary.items():
        print(
            f"{TRAINED_ON}->{lang}: no guard {s['no_guard']:+.4f} (worst {s['no_guard_worst']:+.4f}), "
            f"guard {s['guard']:+.4f} (worst {s['guard_worst']:+.4f}), weight {s['mean_weight']:.2f}"
        )


if __name__ == "__main__":
    main()

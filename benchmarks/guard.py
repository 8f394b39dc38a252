"""Benchmark: the per-query guard, on the population an adapter was trained for and on others.

An adapter trained on one population of users (here: Spanish questions about English XQuAD paragraphs)
is served to queries of other populations (the same questions in German, Chinese, Arabic, Russian, Greek
and English). Without a guard it applies its Spanish-specific map to everyone; with the guard
(``TrainingConfig.guard``, on by default) a query far from the training queries gets the base vector.

Per seed (the trainer's seed and the split of the Spanish questions, half for training by query), the
held-out question ids are scored in every language against the English corpus: nDCG@10 of the base
model, of the adapter without its guard and of the adapter with it, and the mean guard weight. Also the
cost of ``transform`` with and without the guard, per query (single vectors and batches of 64).

    python benchmarks/guard.py [--seeds 0 1 2]

Results: ``benchmarks/results/guard.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone

import numpy as np

from adapter_retrievers import AdapterTrainer, Corpus, TrainingSet, compare
from common import DATA, RESULTS, embedded_corpus, encoder, machine

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
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default=str(RESULTS / "guard.json"))
    args = parser.parse_args()
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
    out = {
        "machine": machine(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "trained_on": TRAINED_ON,
        "seeds": args.seeds,
        "summary_gain_over_base": summary,
        "runs": runs,
    }
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(out, handle, indent=2)
    for lang, s in summary.items():
        print(
            f"{TRAINED_ON}->{lang}: no guard {s['no_guard']:+.4f} (worst {s['no_guard_worst']:+.4f}), "
            f"guard {s['guard']:+.4f} (worst {s['guard_worst']:+.4f}), weight {s['mean_weight']:.2f}"
        )


if __name__ == "__main__":
    main()

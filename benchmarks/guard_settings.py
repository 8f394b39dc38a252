"""Benchmark: which per-query guard to ship, on three questions at once, with the same trained adapters.

Each adapter is fitted once per seed with the guard off (the guard changes nothing in training); every guard
setting (kind, number of centroids or directions, quantile, width) is then summarised and calibrated on the
fit's own validation folds, as the trainer does (``training.trainer.guard_for``), and scored:

- ``languages``: XQuAD Spanish questions (half, by query, per seed) → the held-out half asked in es (the
  trained population), de, zh, ar, ru, el and en; gain over the base model (what ``benchmarks/guard.py``
  measures for the default);
- ``switch``: the drift benchmark's population switch offline: an adapter trained on the questions users
  clicked on days 1-2 (Spanish, ``drift_refresh.days_of_questions``, shown top 10) served on day 3 (Spanish),
  day 4 and 5 (German) and day 6 (Chinese);
- ``scifact``: SciFact test after the default fit on SciFact train, 10 seeds: what the guard costs the
  trained population where the adapter gains most.

    python benchmarks/guard_settings.py [--parts languages switch scifact]

Results: ``benchmarks/results/guard_settings.json``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from datetime import datetime, timezone

import numpy as np

import drift_refresh
from adapter_retrievers import AdapterTrainer, Corpus, TrainingSet, compare
from adapter_retrievers.evaluation import score_vectors
from adapter_retrievers.training.trainer import guard_for
from common import DATA, RESULTS, embedded_corpus, encoder, machine, query_vectors, scifact

SETTINGS = [("centroids", c, q, w) for c in (8, 16, 32) for q in (0.95, 0.99) for w in (0.5, 1.0)] + [
    ("gaussian", 32, 0.99, 1.0),  # the first guard's default
    ("gaussian", 64, 0.9, 0.25),  # the strictest Gaussian tried
]
LANGUAGES = ("es", "de", "zh", "ar", "ru", "el", "en")


def name(setting: tuple) -> str:
    kind, components, quantile, width = setting
    return f"{kind} {components}, quantile {quantile}, width {width}"


def gains_per_setting(trainer: AdapterTrainer, plan, adapter, tests: dict) -> dict[str, dict[str, float]]:
    """``{setting: {test: gain over base}}`` for the unguarded adapter ("none") and every guard setting."""

    def gain(candidate, vectors, queries, corpus) -> float:
        base, adapted = compare(candidate, vectors, queries, corpus, ("ndcg@10",)).means()
        return adapted - base

    out = {"none": {t: gain(adapter, *args) for t, args in tests.items()}}
    for setting in SETTINGS:
        kind, components, quantile, width = setting
        cfg = replace(
            trainer.config, guard_kind=kind, guard_components=components, guard_quantile=quantile, guard_width=width
        )
        guarded = adapter.with_guard(guard_for(plan, cfg))
        out[name(setting)] = {t: gain(guarded, *args) for t, args in tests.items()}
    return out


def fit(train: TrainingSet, vectors: np.ndarray, corpus: Corpus, seed: int, model_id: str):
    trainer = AdapterTrainer(model_id=model_id, progress=False, seed=seed, guard=False)
    result = trainer.fit_vectors(train, vectors, None, None, corpus)
    return trainer, trainer._plan(train, vectors, None, None, corpus), result.adapter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="*", default=["languages", "switch", "scifact"])
    parser.add_argument("--out", default=str(RESULTS / "guard_settings.json"))
    args = parser.parse_args()
    enc = encoder()
    runs: dict[str, list] = {}
    if {"languages", "switch"} & set(args.parts):
        corpus = embedded_corpus(Corpus.from_beir(DATA / "xquad" / "en"), enc)
        questions = {lang: TrainingSet.from_beir(DATA / "xquad" / lang, "test") for lang in LANGUAGES}
        by_id = {
            lang: dict(zip(ts.query_ids, enc.embed_queries([ts.queries[q] for q in ts.query_ids])))
            for lang, ts in questions.items()
        }

        def rows(lang: str, ids: list[str]) -> np.ndarray:
            return np.stack([by_id[lang][q] for q in ids])

        def test(lang: str, ids: list[str]) -> tuple:
            return rows(lang, ids), questions[lang].subset(ids), corpus

    if "languages" in args.parts:
        for seed in (0, 1, 2):
            train, held = questions["es"].split(0.5, seed=seed, by="query")
            trainer, plan, adapter = fit(train, rows("es", train.query_ids), corpus, seed, enc.model_id)
            tests = {lang: test(lang, held.query_ids) for lang in LANGUAGES}
            runs.setdefault("languages", []).append(gains_per_setting(trainer, plan, adapter, tests))
            print("languages, seed", seed, flush=True)
    if "switch" in args.parts:
        for seed in (0, 1, 2):
            days = drift_refresh.days_of_questions(questions["es"], seed)
            served = days[0] + days[1]
            shown = score_vectors(rows("es", served), questions["es"].subset(served), corpus, ("recall@10",))
            clicked = [q for q, r in zip(served, shown.per_query["recall@10"]) if r > 0]
            trainer, plan, adapter = fit(
                questions["es"].subset(clicked), rows("es", clicked), corpus, seed, enc.model_id
            )
            tests = {
                "day 3 es": test("es", days[2]),
                "day 4 de": test("de", days[3]),
                "day 5 de": test("de", days[4]),
                "day 6 zh": test("zh", days[5]),
            }
            runs.setdefault("switch", []).append(gains_per_setting(trainer, plan, adapter, tests))
            print("switch, seed", seed, f"({len(clicked)} clicked questions)", flush=True)
    if "scifact" in args.parts:
        corpus, train, test_set = scifact(enc)
        train_vectors, test_vectors = query_vectors(enc, train), query_vectors(enc, test_set)
        for seed in range(10):
            trainer, plan, adapter = fit(train, train_vectors, corpus, seed, enc.model_id)
            tests = {"scifact test": (test_vectors, test_set, corpus)}
            runs.setdefault("scifact", []).append(gains_per_setting(trainer, plan, adapter, tests))
            print("scifact, seed", seed, flush=True)
    summary = {}
    for part, seeds in runs.items():
        for setting in seeds[0]:
            for t in seeds[0][setting]:
                values = [run[setting][t] for run in seeds]
                summary.setdefault(part, {}).setdefault(setting, {})[t] = {
                    "mean": float(np.mean(values)),
                    "worst": float(min(values)),
                    "seeds": values,
                }
    for part, settings in summary.items():
        print(f"\n{part} (gain over base, mean (worst seed))")
        for setting, cells in settings.items():
            text = "  ".join(f"{t} {c['mean']:+.4f} ({c['worst']:+.4f})" for t, c in cells.items())
            print(f"{setting:40s} {text}")
    out = {
        "machine": machine(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": enc.model_id,
        "summary": summary,
    }
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(out, handle, indent=2)


if __name__ == "__main__":
    main()

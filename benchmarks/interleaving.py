"""Benchmark: how many queries team-draft interleaving needs to tell a better candidate, against the offline
held-out test on clicks, and what interleaving costs per query.

**Sensitivity.** XQuAD: Spanish questions against the 240 English paragraphs (all-MiniLM-L6-v2, exact
search). Live is the base model; the candidate is an adapter trained (``TrainingConfig`` defaults) on 400
of the questions, blended with the identity at several strengths so that its true gain over live on the
other questions (nDCG@10, known from XQuAD's qrels) ranges from about +0.02 up. Users ask questions drawn
from those others and click the paragraph that answers if it is among the 10 shown (as in
``drift_refresh.py``). Per repetition (a fresh random stream of questions) we count the questions each
method needs until it declares the candidate better at 95%:

- *interleaving*: every question is shown as a team draft of live's and the candidate's top 10, the click
  credited to the team that picked the paragraph (to neither where both would have picked it: a shared pick);
  the anytime-valid betting test of ``refresh``
  (:func:`adapter_retrievers.evidence.betting_test`) on the +1/-1 outcomes;
- *offline, anytime-valid*: every question is served by live; a clicked one becomes a held-out query scored
  by both (nDCG@10 of the clicked paragraph), the same betting test on the per-query gains: what
  ``refresh`` does with clicks;
Questions to detection: median (and 90th percentile) over the repetitions; a repetition that does not
detect within ``--max-queries`` counts as that many. Beside them, the *fixed-sample* sizes (one test at a
size chosen in advance, one-sided 5%, 80% power: ``n = ((1.645 + 0.842) σ / μ)²``) from the per-question
outcome of a draft (interleaving: +1/0/-1 over 20,000 drafts) and the per-question gain on the questions
live gets a click on (offline, divided by the click rate to count every question asked).

**Cost.** The LangChain ``AdapterRetriever`` over an embedded Chroma collection (SciFact's 5,183 abstracts
with ``--scifact``, the 240 XQuAD paragraphs otherwise; document vectors from the cache), top 10: the plain
retriever and the same retriever with ``interleave=1.0`` (a second adapter, a second search and a draft)
run back to back per query in alternating order, with query vectors from the model (what a user pays)
and from the vector cache (search alone: the largest relative overhead); and the draft itself
(:func:`team_draft` on two top-10 lists, propensities included). Median µs per query and ratios.

    nice -n 10 python benchmarks/interleaving.py [--repetitions 200] [--seeds 3] [--skip-cost] [--out NAME]

Results: ``benchmarks/results/interleaving.json`` (or ``NAME.json``).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from datetime import datetime, timezone

import numpy as np

from adapter_retrievers import AdapterTrainer, Corpus, TrainingSet
from adapter_retrievers.evaluation import exact_search, score_vectors
from adapter_retrievers.evidence import wealth_path
from adapter_retrievers.interleaving import CANDIDATE, SHARED, credit, outcome, team_draft
from common import CACHE, DATA, RESULTS, embedded_corpus, encoder, machine

SHOWN = 10
METRIC = "ndcg@10"
STRENGTHS = (0.1, 0.2, 0.35, 0.5, 1.0)


def blend(adapter, strength: float):
    """``strength * adapter + (1 - strength) * identity`` for a linear adapter: a weaker candidate."""
    params = {
        "weight": strength * adapter.params["weight"] + (1 - strength) * np.eye(adapter.dimension, dtype=np.float32),
        "bias": strength * adapter.params["bias"],
    }
    return type(adapter)(adapter.dimension, adapter.base_model, params, adapter.normalize, {}, adapter.guard)


def candidates(enc, corpus, questions: TrainingSet, seed: int):
    """Query vectors of the evaluation questions and candidates of several true gains over the base model."""
    rng = np.random.default_rng(seed)
    ids = list(rng.permutation(questions.query_ids))
    train, held = questions.subset(ids[:400]), questions.subset(ids[400:])
    vectors = lambda ts: enc.embed_queries([ts.queries[q] for q in ts.query_ids])  # noqa: E731
    trainer = AdapterTrainer(model_id=enc.model_id, progress=False, seed=seed)
    adapter = trainer.fit_vectors(train, vectors(train), None, None, corpus).adapter
    x = vectors(held)
    base = score_vectors(x, held, corpus, (METRIC,)).per_query[METRIC]
    out = []
    for strength in STRENGTHS:
        candidate = adapter if strength == 1.0 else blend(adapter, strength)
        per_query = score_vectors(candidate.transform(x), held, corpus, (METRIC,)).per_query[METRIC]
        out.append({"strength": strength, "adapter": candidate, "gain": float(per_query.mean() - base.mean())})
    return held, x, base, out


def detections(rng, coins, held, live_top, cand_top, base, cand, max_queries: int) -> dict[str, int]:
    """Questions until each method detects the candidate on one random stream of questions."""
    answers = [next(iter(held.relevant[q])) for q in held.query_ids]
    order = rng.integers(0, len(answers), max_queries)
    # interleaving: outcome of each question, drafted in chunks until the test is won
    results: list[int] = []
    found = {"interleaving": max_queries}
    for start in range(0, max_queries, 250):
        for i in order[start : start + 250]:
            drafted = team_draft(live_top[i], cand_top[i], SHOWN, coins)
            teams = [t for key, t in zip(drafted.keys, drafted.teams) if key == answers[i]]
            results.append(outcome(credit(teams)))
        hit = np.flatnonzero(wealth_path(np.array(results, dtype=np.float64)) >= 20)
        if hit.size:
            found["interleaving"] = int(hit[0]) + 1
            break
    # offline: live serves; a click when the answer is shown; the clicked queries are scored by both
    clicked = np.array([answers[i] in live_top[i] for i in order])
    gains = (cand - base)[order]
    where = np.flatnonzero(clicked)
    wealth = wealth_path(gains[where])
    hit = np.flatnonzero(wealth >= 20)
    found["offline_anytime"] = int(where[hit[0]]) + 1 if hit.size else max_queries
    return found


def sensitivity(enc, corpus, questions, seeds, repetitions, max_queries) -> list[dict]:
    rows = []
    for seed in seeds:
        held, x, base, options = candidates(enc, corpus, questions, seed)
        live_top = [[corpus.ids[j] for j in row] for row in exact_search(x, corpus.embeddings, SHOWN)]
        for option in options:
            adapted = option["adapter"].transform(x)
            cand_top = [[corpus.ids[j] for j in row] for row in exact_search(adapted, corpus.embeddings, SHOWN)]
            cand = score_vectors(adapted, held, corpus, (METRIC,)).per_query[METRIC]
            rng, coins = np.random.default_rng(seed * 1000 + 1), random.Random(seed)
            found = [
                detections(rng, coins, held, live_top, cand_top, base, cand, max_queries) for _ in range(repetitions)
            ]
            row = {"seed": seed, "strength": option["strength"], "true_gain": option["gain"]}
            for method in found[0]:
                values = np.array([f[method] for f in found])
                row[method] = {
                    "median": float(np.median(values)),
                    "p90": float(np.quantile(values, 0.9)),
                    "undetected": int((values >= max_queries).sum()),
                }
            row["ratio_anytime"] = row["offline_anytime"]["median"] / row["interleaving"]["median"]
            wins = np.array(
                [
                    outcome(credit([t for k, t in zip(d.keys, d.teams) if k == answer]))
                    for d, answer in _sample(held, live_top, cand_top, coins, 20000)
                ]
            )
            row["candidate_win_rate"] = float((wins == 1).sum() / max((wins != 0).sum(), 1))
            row["decided_share"] = float((wins != 0).mean())
            answers = [next(iter(held.relevant[q])) for q in held.query_ids]
            shown = np.array([answer in top for answer, top in zip(answers, live_top)])
            clicked_gain = (cand - base)[shown]
            row["click_rate"] = float(shown.mean())
            row["clicked_gain"] = float(clicked_gain.mean())
            row["fixed_interleaving"] = _fixed_n(wins)
            row["fixed_offline"] = _fixed_n(clicked_gain) / shown.mean()
            row["ratio_fixed"] = row["fixed_offline"] / row["fixed_interleaving"]
            rows.append(row)
            print(
                f"seed {seed} strength {option['strength']:.2f} true gain {option['gain']:+.4f} (on clicked "
                f"{row['clicked_gain']:+.4f}): questions to detect, anytime: interleaving "
                f"{row['interleaving']['median']:.0f}, offline {row['offline_anytime']['median']:.0f} "
                f"({row['ratio_anytime']:.1f}x); fixed-sample: {row['fixed_interleaving']:.0f} vs "
                f"{row['fixed_offline']:.0f} ({row['ratio_fixed']:.1f}x); candidate wins "
                f"{row['candidate_win_rate']:.0%} of {row['decided_share']:.0%} decided drafts",
                flush=True,
            )
    return rows


def _fixed_n(values: np.ndarray) -> float:
    """Questions a one-sided 5% test at 80% power needs for this mean and spread (inf when the mean <= 0)."""
    mean, sd = float(np.mean(values)), float(np.std(values, ddof=1))
    return ((1.645 + 0.842) * sd / mean) ** 2 if mean > 0 else float("inf")


def _sample(held, live_top, cand_top, coins, n):
    answers = [next(iter(held.relevant[q])) for q in held.query_ids]
    rng = np.random.default_rng(0)
    for i in rng.integers(0, len(answers), n):
        yield team_draft(live_top[i], cand_top[i], SHOWN, coins), answers[i]


def cost(enc, scifact: bool, queries: int) -> dict:
    """µs per query: plain retriever, interleaved retriever, the draft alone."""
    import chromadb
    from langchain_chroma import Chroma

    from adapter_retrievers import QueryAdapter
    from adapter_retrievers.integrations.langchain import AdapterRetriever, EncoderEmbeddings
    from adapter_retrievers.registry import AdapterRegistry

    folder = DATA / ("scifact" if scifact else "xquad/en")
    corpus = embedded_corpus(Corpus.from_beir(folder), enc)
    questions = TrainingSet.from_beir(folder, "test")
    texts = list(questions.queries.values())[:queries]
    client = chromadb.EphemeralClient()
    collection = client.create_collection(f"cost-{time.time_ns()}", configuration={"hnsw": {"space": "cosine"}})
    for start in range(0, len(corpus), 1000):
        collection.add(
            ids=corpus.ids[start : start + 1000],
            documents=corpus.texts[start : start + 1000],
            embeddings=corpus.embeddings[start : start + 1000].tolist(),
        )
    dim = corpus.embeddings.shape[1]
    rng = np.random.default_rng(0)

    def adapter():
        a = QueryAdapter.create("linear", dim, enc.model_id)
        a.params["weight"] = (np.eye(dim) + 0.05 * rng.standard_normal((dim, dim))).astype(np.float32)
        return a

    live, challenger = adapter(), adapter()
    enc.embed_queries(texts)  # the cached variant then only looks vectors up
    out = {"corpus": f"{'SciFact' if scifact else 'XQuAD en'} ({len(corpus)} documents, d={dim}), embedded Chroma"}
    out["queries"] = len(texts)
    for name, embedder in (("model", enc.encoder), ("cached", enc)):
        embeddings = EncoderEmbeddings(embedder)
        vectorstore = Chroma(client=client, collection_name=collection.name, embedding_function=embeddings)
        plain_registry = AdapterRegistry(enc.model_id, dim, default=live)
        mixed = AdapterRegistry(enc.model_id, dim, default=live, interleave=1.0, seed=0)
        mixed.set_challenger(None, challenger)
        plain = AdapterRetriever(vectorstore=vectorstore, embeddings=embeddings, adapter=plain_registry, k=SHOWN)
        interleaved = AdapterRetriever(vectorstore=vectorstore, embeddings=embeddings, adapter=mixed, k=SHOWN)
        for q in texts[:5]:  # warm-up
            plain.invoke(q)
            interleaved.invoke(q)
        times: dict[str, list[float]] = {"plain": [], "interleaved": []}
        for i, q in enumerate(texts):
            order = [("plain", plain), ("interleaved", interleaved)]
            for which, retriever in order if i % 2 == 0 else order[::-1]:
                started = time.perf_counter()
                docs = retriever.invoke(q)
                times[which].append(time.perf_counter() - started)
                if which == "interleaved":
                    assert {d.metadata.get("adapter_ranker") for d in docs} <= {"live", CANDIDATE, SHARED}
        plain_us = statistics.median(times["plain"]) * 1e6
        inter_us = statistics.median(times["interleaved"]) * 1e6
        out[name] = {
            "plain_us": plain_us,
            "interleaved_us": inter_us,
            "ratio": inter_us / plain_us,
            "at_10_percent_ratio": (plain_us + 0.1 * (inter_us - plain_us)) / plain_us,
        }
    tops = [[f"d{j}" for j in rng.permutation(30)[:SHOWN]] for _ in range(200)]
    coins = random.Random(0)
    draft = []
    for i in range(2000):
        started = time.perf_counter()
        team_draft(tops[i % 200], tops[(i + 1) % 200], SHOWN, coins)
        draft.append(time.perf_counter() - started)
    out["draft_us"] = statistics.median(draft) * 1e6
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--repetitions", type=int, default=200)
    parser.add_argument("--max-queries", type=int, default=6000)
    parser.add_argument("--cost-queries", type=int, default=300)
    parser.add_argument("--scifact", action="store_true", help="time on SciFact's 5,183 abstracts (cached vectors)")
    parser.add_argument("--skip-sensitivity", action="store_true")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--out", default="interleaving", help="results file name in benchmarks/results/, no suffix")
    args = parser.parse_args()
    enc = encoder()
    out = {
        "benchmark": "interleaving",
        "machine": machine(),
        "model": enc.model_id,
        "cache": str(CACHE),
        "seeds": args.seeds,
        "repetitions": args.repetitions,
        "max_queries": args.max_queries,
    }
    started = time.perf_counter()
    if not args.skip_sensitivity:
        corpus = embedded_corpus(Corpus.from_beir(DATA / "xquad" / "en"), enc)
        questions = TrainingSet.from_beir(DATA / "xquad" / "es", "test")
        out["sensitivity"] = sensitivity(enc, corpus, questions, range(args.seeds), args.repetitions, args.max_queries)
    if not args.skip_cost:
        out["cost"] = c = cost(enc, args.scifact, args.cost_queries)
        for name in ("model", "cached"):
            m = c[name]
            print(
                f"cost on {c['corpus']}, query vectors from the {name}: plain {m['plain_us']:.0f} µs, interleaved "
                f"{m['interleaved_us']:.0f} µs ({m['ratio']:.2f}x); at 10% of traffic "
                f"{m['at_10_percent_ratio']:.3f}x"
            )
        print(f"the draft alone (two top-10 lists, propensities included): {c['draft_us']:.0f} µs")
    out["seconds"] = round(time.perf_counter() - started, 1)
    out["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(out, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()

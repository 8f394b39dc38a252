"""Benchmark: the nightly refresh loop under drifting traffic, replayed day by day through a real chain
into a real Arize Phoenix server, with loop variants side by side.

XQuAD questions are replayed as days of traffic through a real LangChain chain (``AdapterRetriever``
following the adapter store, over an embedded Chroma collection of the 240 English paragraphs; users
see the top 10). With ``--source phoenix`` (default) the chain is traced by OpenInference's LangChain
instrumentor over OTLP to a local ``phoenix serve`` (started here on 127.0.0.1, a free port, a temporary
working dir; stopped at the end), each click is a Phoenix document annotation (``relevance`` at the
clicked position) and every night ``refresh`` reads the server with ``PhoenixSource``; with ``--source
log`` the ``RetrievalLogger`` capture handler writes our JSONL log instead and ``LogSource`` reads it.
A user clicks the paragraph that answers the question if it is among the 10 shown (nothing otherwise).

Scenarios (``--scenario``):

- ``drift``: 7 days of 150 questions; Spanish speakers first, then German, then Chinese; questions about
  new paragraphs appear over time; day 3's clicks are poisoned (``--poison random``: a random shown
  paragraph, the right one 1 time in 10; ``--poison wrong``: always a wrong shown paragraph).
- ``young``: a young application, 14 nights of 50 clicks each (Spanish questions served until 50 clicks).

Each loop variant (``VARIANTS``: the default loop with interleaving on 10% of traffic and the per-query
guard, the same without interleaving or without the guard, and with interleaving on half the traffic, for
applications whose few clicks are the bottleneck) runs its own loop (store, registry that
follows it, Phoenix project) on the same questions and the same users' choices. The table shows the live
adapter's nDCG@10 on the *next* day's traffic (exact search) as the registry serves it (its population check
carried on from the day) next to the base model's, and the decisions (the JSON also keeps live on every
question, and each question whose score live changes with its guard weight);
each night also records the offline estimate of tonight's candidate's gain over live on the clicked
queries it scored (plain and inverse-propensity weighted) next to its true gain on every question of the
day (clicked or not), and the feedback profile the quarantine check saw. At the end a rollback is checked
to restore the previous state's numbers exactly (served through the registry that follows the store).

    nice -n 10 python benchmarks/drift_refresh.py                                   # drift, every variant, 3 seeds
    nice -n 10 python benchmarks/drift_refresh.py --variants main --poison wrong --out drift_refresh_wrong
    nice -n 10 python benchmarks/drift_refresh.py --scenario young --variants main,interleave_half
    nice -n 10 python benchmarks/drift_refresh.py --seeds 1 --days 3 --per-day 60   # a quick check

Results: ``benchmarks/results/<out>.json`` and ``<out>.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from adapter_retrievers import Corpus, TrainingSet, capture
from adapter_retrievers.capture import RetrievalLog
from adapter_retrievers.evaluation import score_vectors
from adapter_retrievers.refresh import RefreshConfig, read_jsonl, refresh
from adapter_retrievers.registry import AdapterRegistry
from adapter_retrievers.sources import LogSource, PhoenixSource
from adapter_retrievers.store import AdapterStore
from common import DATA, RESULTS, embedded_corpus, encoder, machine

# (language, poisoned) per day; the last day is only traffic to evaluate the last decision on
DRIFT = [("es", False), ("es", False), ("es", True), ("de", False), ("de", False), ("zh", False), ("zh", False)]
YOUNG = [("es", False)] * 14
SCHEDULE = DRIFT
PER_DAY = 150
CLICKS_PER_DAY: int | None = None  # young application: questions are served until this many clicks
POISON = "random"
SHOWN = 10  # results a user sees; a click can only land on one of them
START = datetime(2026, 11, 1, tzinfo=timezone.utc)
METRIC = "ndcg@10"
WINDOW_DAYS: float | None = 3.0  # drift: train on the last 3 days of pairs (young: all)
# loop variants compared: registry interleaving fraction and RefreshConfig.training overrides
VARIANTS = {
    "main": {"interleave": 0.1, "training": {}},
    "no_interleaving": {"interleave": 0.0, "training": {}},
    "no_guard": {"interleave": 0.1, "training": {"guard": False}},
    "interleave_half": {"interleave": 0.5, "training": {}},
}
VARIANT_NAMES = {
    "main": "pooled evidence + interleaving on 10% + guard (the defaults)",
    "no_interleaving": "pooled evidence + guard, no interleaving",
    "no_guard": "pooled evidence + interleaving on 10%, no guard",
    "interleave_half": "pooled evidence + interleaving on 50% + guard (a young application's setting)",
}


def days_of_questions(qrels: TrainingSet, seed: int) -> list[list[str]]:
    """Question ids per day, none repeated; day d draws from the first 60 + 30 d paragraphs (new ones appear)."""
    rng = np.random.default_rng(seed)
    by_paragraph: dict[str, list[str]] = {}
    for qid, docs in qrels.relevant.items():
        by_paragraph.setdefault(next(iter(docs)), []).append(qid)
    used: set[str] = set()
    days = []
    for day in range(len(SCHEDULE) + 1):
        allowed = {f"p{i:03d}" for i in range(min(240, 60 + 30 * day))}
        pool = sorted(q for p, qs in by_paragraph.items() if p in allowed for q in qs if q not in used)
        size = min(PER_DAY, len(pool)) if CLICKS_PER_DAY is None else len(pool)  # young: served until enough clicks
        chosen = list(rng.choice(pool, size=size, replace=False))
        if CLICKS_PER_DAY is None:
            used.update(chosen)
        days.append(chosen)
    return days


def build_vectorstore(corpus: Corpus, enc, tmp: Path):
    """Chroma collection of the paragraphs; each carries its id in metadata (OpenInference does not record
    ``Document.id``, so the trace names a paragraph by this metadata)."""
    import chromadb
    from langchain_chroma import Chroma

    from adapter_retrievers.integrations.langchain import EncoderEmbeddings

    client = chromadb.PersistentClient(path=str(tmp / "chroma"))
    vectorstore = Chroma(
        client=client,
        collection_name="xquad-en",
        embedding_function=EncoderEmbeddings(enc),
        collection_configuration={"hnsw": {"space": "cosine"}},
    )
    vectorstore.add_texts(corpus.texts, ids=corpus.ids, metadatas=[{"doc_id": i} for i in corpus.ids])
    return vectorstore


def build_chain(vectorstore, enc, registry: AdapterRegistry):
    from langchain_core.runnables import RunnableLambda

    from adapter_retrievers.integrations.langchain import AdapterRetriever, EncoderEmbeddings

    retriever = AdapterRetriever(vectorstore=vectorstore, embeddings=EncoderEmbeddings(enc), adapter=registry, k=SHOWN)
    # the LLM is the one part that cannot run here: an extractive stand-in answers from the top paragraph
    answer = RunnableLambda(lambda docs: {"answer": docs[0].page_content[:200], "sources": [d.id for d in docs]})
    return retriever | answer


class Traffic:
    """Where one loop's traffic goes and how its clicks are recorded: our capture log or a Phoenix project."""

    def __init__(self, kind: str, tmp: Path, url: str | None, project: str) -> None:
        self.kind, self.url, self.project = kind, url, project
        self.day_start = START
        self.real_start = datetime.now(timezone.utc)
        if kind == "log":
            from adapter_retrievers.integrations.langchain import RetrievalLogger

            self.log = RetrievalLog(tmp / "logs" / f"{project}.jsonl")
            self.callbacks = [RetrievalLogger(self.log)]
            self.source = LogSource(self.log.path)
        else:
            import httpx
            from phoenix.client import Client

            # a long timeout: under load Phoenix answers a batch of annotations in more than httpx's 5 s
            self.client = Client(base_url=url, http_client=httpx.Client(base_url=url, timeout=120.0))
            self.callbacks = []
            self.source = PhoenixSource(url, project)

    def now(self) -> datetime:
        """The simulated time: the day's start plus the real time spent serving it."""
        return self.day_start + (datetime.now(timezone.utc) - self.real_start)

    @contextlib.contextmanager
    def day(self, day: int):
        self.day_start, self.real_start = START + timedelta(days=day), datetime.now(timezone.utc)
        if self.kind == "log":
            real_now = capture.now_iso
            capture.now_iso = lambda: self.now().isoformat(timespec="milliseconds")
            try:
                yield
            finally:
                capture.now_iso = real_now
        else:
            from adapter_retrievers.integrations.phoenix import trace_langchain

            offset = int((self.day_start - self.real_start).total_seconds() * 1e9)
            with trace_langchain(self.url, self.project, clock_offset_ns=lambda: offset):
                yield

    def record_clicks(self, clicks: list[tuple[str, str, int, str]], n_retrievals: int) -> None:
        """``clicks``: (run id, question, shown position, paragraph id) per click of the day just served."""
        if self.kind == "log":
            for run_id, _, _, doc_id in clicks:
                self.log.add_click(run_id, doc_id)
            return
        from adapter_retrievers.integrations.phoenix import wait_for_spans

        stored = wait_for_spans(self.url, self.project, n_retrievals, start_time=self.day_start)
        spans = {s["attributes"]["input.value"]: s["context"]["span_id"] for s in stored}
        notes = [
            {
                "span_id": spans[question],
                "document_position": position,
                "name": "relevance",
                "annotator_kind": "HUMAN",
                "result": {"label": "relevant", "score": 1.0},
            }
            for _, question, position, _ in clicks
        ]
        for i in range(0, len(notes), 100):
            self.client.spans.log_document_annotations(document_annotations=notes[i : i + 100], sync=True)


def serve_day(chain, traffic: Traffic, day: int, qs: TrainingSet, qids: list[str], poisoned: bool, rng) -> dict:
    """One day's questions through the chain; each user clicks the answering paragraph if shown (a poisoned
    day: a random shown paragraph, or with ``--poison wrong`` a shown paragraph that does not answer)."""
    clicks = []
    served = []
    language = SCHEDULE[day][0]
    with traffic.day(day):
        for n, qid in enumerate(qids):
            if CLICKS_PER_DAY is not None and len(clicks) >= CLICKS_PER_DAY:
                break
            run_id = uuid.uuid4()  # the retrieval's trace: the click is attached to it
            question = qs.queries[qid]
            out = chain.invoke(
                question,
                config={
                    "callbacks": traffic.callbacks,
                    "run_id": run_id,
                    "metadata": {"session_id": f"{language}-{n}"},
                },
            )
            served.append(qid)
            shown = out["sources"]
            answer = next(iter(qs.relevant[qid]))
            if not poisoned:
                target = answer
            elif POISON == "wrong":
                wrong = [d for d in shown if d != answer]
                target = wrong[rng.integers(len(wrong))]
            else:
                target = shown[rng.integers(len(shown))]
            if target in shown:
                clicks.append((str(run_id), question, shown.index(target), target))
    traffic.record_clicks(clicks, len(served))
    return {"questions": len(served), "clicks": len(clicks), "served": served}


def run_seed(seed: int, corpus: Corpus, questions: dict[str, TrainingSet], enc, variants, source, url) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="drift-"))
    try:
        vectorstore = build_vectorstore(corpus, enc, tmp)
        days = days_of_questions(questions["es"], seed)
        loops = {}
        for name in variants:
            variant = VARIANTS[name]
            store = AdapterStore(tmp / f"store-{name}")
            registry = AdapterRegistry.from_store(
                store, enc.model_id, corpus.embeddings.shape[1], 0, interleave=variant["interleave"], seed=seed
            )
            loops[name] = {
                "store": store,
                "registry": registry,
                "chain": build_chain(vectorstore, enc, registry),
                "traffic": Traffic(source, tmp, url, f"drift-seed{seed}-{name}"),
                "config": RefreshConfig(seed=seed, window_days=WINDOW_DAYS, training=variant["training"]),
                "rng": np.random.default_rng(seed),  # the same users' choices in every loop
                "rows": [],
            }
        probe = questions[SCHEDULE[-1][0]].subset(days[-1])  # fixed questions: what each served state scores
        probe_vectors = enc.embed_queries([probe.queries[q] for q in probe.query_ids])
        for loop in loops.values():
            loop["served"] = [served_scores(loop["registry"], probe_vectors, probe, corpus)]  # before day 1: base
        for day, (language, poisoned) in enumerate(SCHEDULE):
            next_language = SCHEDULE[day + 1][0] if day + 1 < len(SCHEDULE) else SCHEDULE[-1][0]
            for name, loop in loops.items():
                store, traffic = loop["store"], loop["traffic"]
                live_before = store.live
                served = serve_day(loop["chain"], traffic, day, questions[language], days[day], poisoned, loop["rng"])
                started = time.perf_counter()
                outcome = refresh(
                    store, [traffic.source], corpus, enc, loop["config"], now=START + timedelta(days=day, hours=23)
                )
                seconds = time.perf_counter() - started
                next_ids = days[day + 1][: len(served["served"])] if CLICKS_PER_DAY else days[day + 1]
                base, live, best, changed, unchecked = next_day_scores(
                    store, corpus, questions[next_language], next_ids, enc, questions[SCHEDULE[0][0]], loop["registry"]
                )
                loop["served"].append(served_scores(loop["registry"], probe_vectors, probe, corpus))
                record = outcome.record
                evidence = record.get("comparison") or {}
                loop["rows"].append(
                    {
                        "day": day + 1,
                        "traffic": language + (" (poisoned)" if poisoned else ""),
                        **{k: v for k, v in served.items() if k != "served"},
                        "decision": outcome.action,
                        "reason": outcome.reason,
                        "candidate": outcome.candidate,
                        "live": store.live,
                        "held_out": record.get("scores"),
                        "new_pairs": record.get("new_pairs"),
                        "evidence": {
                            "offline": evidence.get("offline"),
                            "online": evidence.get("online"),
                            "combined": evidence.get("combined"),
                        },
                        "quarantine_check": record.get("quarantine_check"),
                        "estimate": offline_estimate(
                            store, record, live_before, corpus, questions[language], served["served"], enc
                        ),
                        "next_day_language": next_language,
                        "next_day_base": base,
                        "next_day_live": live,
                        "next_day_live_every_query": unchecked,
                        "next_day_best_stored": best,
                        "next_day_changed": changed,
                        "refresh_seconds": round(seconds, 1),
                    }
                )
                combined = evidence.get("combined") or {}
                print(
                    f"seed {seed} {name:<15} day {day + 1:>2} {loop['rows'][-1]['traffic']:<13} "
                    f"clicks {served['clicks']:>3} {outcome.action:<11} live={store.live or 'base':<6} "
                    f"e={combined.get('e_value', 0):8.2f} "
                    f"next day ({next_language}) base {base:.4f} live {live:.4f}  [{seconds:.0f}s] "
                    f"{outcome.reason[:70]}",
                    flush=True,
                )
        runs = {}
        for name, loop in loops.items():
            rollback = check_rollback(loop, probe_vectors, probe, corpus)
            runs[name] = {"seed": seed, "days": loop["rows"], "rollback": rollback, "history": loop["store"].history()}
        return runs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def offline_estimate(store, record, live_before, corpus, qs: TrainingSet, served: list[str], enc) -> dict | None:
    """Tonight's candidate against the live adapter it was compared with: the refresh's offline estimate on
    the clicked queries it scored (plain and inverse-propensity weighted, from the evidence ledger) next to
    the true gain on every question served that day, clicked or not (XQuAD's qrels)."""
    version = record.get("version") if record.get("action") != "demoted" else record.get("candidate")
    if not version or version not in store.versions():
        return None
    rows = [
        r
        for r in read_jsonl(store.state_dir / "evidence.jsonl")
        if r.get("candidate") == version and r.get("candidate_score") is not None
    ]
    if not rows:
        return None
    gains = np.array([r["candidate_score"] - r["live_score"] for r in rows])
    weights = np.array([min(float(r.get("weight") or 1.0), 20.0) for r in rows])
    day = qs.subset(served)
    vectors = enc.embed_queries([day.queries[q] for q in day.query_ids])
    dim = corpus.embeddings.shape[1]
    live = store.load(live_before, enc.model_id, dim) if live_before else None
    candidate = store.load(version, enc.model_id, dim)
    served_vectors = live.transform(vectors) if live is not None else vectors
    truth = score_vectors(candidate.transform(vectors), day, corpus, (METRIC,)).mean()[METRIC]
    truth -= score_vectors(served_vectors, day, corpus, (METRIC,)).mean()[METRIC]
    return {
        "n_scored": len(rows),
        "n_weighted": int((weights > 1).sum()),
        "plain": float(gains.mean()),
        "weighted": float((weights * gains).sum() / weights.sum()),
        "truth": float(truth),
    }


def next_day_scores(
    store: AdapterStore,
    corpus: Corpus,
    qs: TrainingSet,
    qids: list[str],
    enc,
    first: TrainingSet,
    registry: AdapterRegistry,
) -> tuple[float, float, float, list[dict], float]:
    """The next day's nDCG@10 of the base model, of live as the registry serves it (its population check
    carried on from today's traffic, the questions served in order), and of the best of the base model and
    every version stored so far (a clairvoyant choice among the adapters trained up to tonight: what no rule
    can beat); the questions whose nDCG@10 live changes, with live's guard weight for each, whether it was
    served (not stepped aside) and live's gain on the same question asked in the first population's language
    (``first``): where a loss comes from; and live's nDCG@10 applied to every question (no population check)."""
    subset = qs.subset(qids)
    vectors = enc.embed_queries([subset.queries[q] for q in subset.query_ids])
    dim = corpus.embeddings.shape[1]

    def per_query(adapter) -> np.ndarray:
        served = vectors if adapter is None else adapter.transform(vectors)
        return score_vectors(served, subset, corpus, (METRIC,)).per_query[METRIC]

    base = per_query(None)
    stored = {v: per_query(store.load(v, enc.model_id, dim)) for v in store.versions()}  # live is one of them
    means = {v: float(s.mean()) for v, s in stored.items()}
    changed = []
    served_mean = float(base.mean())
    if store.live is not None:
        live = store.load(store.live, enc.model_id, dim)
        weights = live.guard.weight(vectors) if live.guard is not None else np.ones(len(vectors))
        check = registry.population_check()  # tonight's live: today's state, or a fresh one if promoted
        served = check.replay(weights) if check is not None else np.ones(len(vectors), dtype=bool)
        as_served = np.where(served, stored[store.live], base)
        served_mean = float(as_served.mean())
        gains = stored[store.live] - base
        before = np.concatenate([[np.nan], np.cumsum(weights)[:-1] / np.arange(1, len(weights))])
        changed = [  # in the day's order; mean_weight_before: the mean guard weight of the day's earlier questions
            {
                "question": q,
                "position": i,
                "gain": float(g),
                "guard_weight": float(w),
                "mean_weight_before": float(b),
                "served": bool(on),
            }
            for i, (q, g, w, b, on) in enumerate(zip(subset.query_ids, gains, weights, before, served))
            if g != 0
        ]
        asked_first = first.subset([c["question"] for c in changed if c["question"] in first.queries])
        if len(asked_first):
            first_vectors = enc.embed_queries([asked_first.queries[q] for q in asked_first.query_ids])
            first_base = score_vectors(first_vectors, asked_first, corpus, (METRIC,)).per_query[METRIC]
            first_live = score_vectors(live.transform(first_vectors), asked_first, corpus, (METRIC,)).per_query[METRIC]
            first_gain = dict(zip(asked_first.query_ids, (first_live - first_base).tolist()))
            for c in changed:
                c["gain_in_first_language"] = first_gain.get(c["question"])
    live_mean = float(base.mean()) if store.live is None else means[store.live]
    return float(base.mean()), served_mean, max([float(base.mean()), *means.values()]), changed, live_mean


def served_scores(registry: AdapterRegistry, vectors: np.ndarray, qs: TrainingSet, corpus: Corpus) -> np.ndarray:
    """Per-query nDCG@10 of the adapter the registry the chain follows holds now (the store's live version;
    not recorded as traffic, and whether or not its population check has stepped aside)."""
    return score_vectors(registry.current().transform(vectors), qs, corpus, (METRIC,)).per_query[METRIC]


def check_rollback(loop: dict, vectors: np.ndarray, qs: TrainingSet, corpus: Corpus) -> dict:
    """Undo the last change of live (a promotion or a demotion) with a plain ``rollback`` and compare what the
    registry serves now with what it served, query for query, on the night that state was live before."""
    store, rows = loop["store"], loop["rows"]
    lives = [None] + [row["live"] for row in rows]  # live before day 1, then after each night
    changes = [i for i in range(1, len(lives)) if lives[i] != lives[i - 1]]
    if not changes:
        return {"checked": False, "why": "live never changed: nothing to roll back"}
    before = lives[changes[-1] - 1]
    current = store.live
    record = store.rollback()  # the default: what was live before the last change (a demotion included)
    served = served_scores(loop["registry"], vectors, qs, corpus)
    recorded = loop["served"][changes[-1] - 1]
    return {
        "checked": True,
        "from": current,
        "to": record["live_after"],
        "expected": before,
        "served_equals_before": bool(record["live_after"] == before and np.array_equal(served, recorded)),
        METRIC: float(served.mean()),
        f"{METRIC}_before": float(recorded.mean()),
    }


def main() -> None:
    global SCHEDULE, PER_DAY, CLICKS_PER_DAY, POISON, WINDOW_DAYS  # the scenario sets the whole run
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--scenario", choices=("drift", "young"), default="drift")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"loop variants: {', '.join(VARIANTS)}")
    parser.add_argument("--poison", choices=("random", "wrong"), default="random")
    parser.add_argument("--source", choices=("phoenix", "log"), default="phoenix")
    parser.add_argument("--days", type=int, default=None, help="first N days only (quick checks)")
    parser.add_argument("--per-day", type=int, default=PER_DAY, help="drift: questions a day")
    parser.add_argument("--clicks-per-day", type=int, default=50, help="young: clicks a night")
    parser.add_argument("--out", default=None, help="name of the JSON and PNG in benchmarks/results")
    args = parser.parse_args()
    if args.scenario == "young":
        SCHEDULE, CLICKS_PER_DAY, WINDOW_DAYS = YOUNG, args.clicks_per_day, None
    SCHEDULE = SCHEDULE[: args.days] if args.days else SCHEDULE
    PER_DAY, POISON = args.per_day, args.poison
    out_name = args.out or ("drift_refresh" if args.scenario == "drift" else "drift_refresh_young")
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    enc = encoder()
    corpus = embedded_corpus(Corpus.from_beir(DATA / "xquad" / "en"), enc)
    questions = {lang: TrainingSet.from_beir(DATA / "xquad" / lang, "test") for lang in ("es", "de", "zh")}
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        url = None
        if args.source == "phoenix":
            from adapter_retrievers.integrations.phoenix import local_phoenix

            url = stack.enter_context(local_phoenix())
            print(f"phoenix serve at {url}", flush=True)
        per_seed = [run_seed(seed, corpus, questions, enc, variants, args.source, url) for seed in range(args.seeds)]
    runs = {name: [seed_runs[name] for seed_runs in per_seed] for name in variants}
    summary = {name: summarise(runs[name]) for name in variants}
    out = {
        "benchmark": "drift_refresh",
        "scenario": args.scenario,
        "machine": machine(),
        "model": enc.model_id,
        "source": args.source,
        "schedule": SCHEDULE,
        "per_day": PER_DAY if CLICKS_PER_DAY is None else None,
        "clicks_per_day": CLICKS_PER_DAY,
        "poison": POISON,
        "shown": SHOWN,
        "window_days": WINDOW_DAYS,
        "variants": {name: {"config": VARIANTS[name], "name": VARIANT_NAMES[name]} for name in variants},
        "seconds": round(time.perf_counter() - started, 1),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "comparison": {name: compare_variant(runs[name]) for name in variants},
        "summary": summary,
        "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{out_name}.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    plot(summary, RESULTS / f"{out_name}.png", args.seeds)
    print(comparison_table(out["comparison"]))
    for name in variants:
        print(f"\nvariant {name}: {VARIANT_NAMES[name]}")
        print(table(summary[name], args.seeds))
        print(estimate_table(runs[name]))


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for i, first in enumerate(runs[0]["days"]):
        days = [run["days"][i] for run in runs]
        base = np.array([d["next_day_base"] for d in days])
        live = np.array([d["next_day_live"] for d in days])
        rows.append(
            {
                "day": first["day"],
                "traffic": first["traffic"],
                "next_day": first["next_day_language"],
                "decisions": [d["decision"] for d in days],
                "clicks": float(np.mean([d["clicks"] for d in days])),
                "base_mean": float(base.mean()),
                "base_std": float(base.std()),
                "live_mean": float(live.mean()),
                "live_std": float(live.std()),
                "live_minus_base_mean": float((live - base).mean()),
                "live_minus_base_min": float((live - base).min()),
            }
        )
    return rows


def compare_variant(runs: list[dict]) -> dict:
    """One line per variant: next-day gain over base, days below it, the poisoned day, promotions, rollbacks."""
    gaps = np.array([[d["next_day_live"] - d["next_day_base"] for d in run["days"]] for run in runs])
    poisoned = [i for i, (_, bad) in enumerate(SCHEDULE) if bad]
    first = [next((d["day"] for d in run["days"] if d["decision"] == "promoted"), None) for run in runs]
    after = [
        float(gaps[n, f - 1 :].min()) if f is not None else None for n, f in enumerate(first)
    ]  # from the first promotion on
    best = [[d.get("next_day_best_stored") for d in run["days"]] for run in runs]
    ceiling = (
        float(np.mean([[b - d["next_day_base"] for b, d in zip(bs, run["days"])] for bs, run in zip(best, runs)]))
        if all(b is not None for bs in best for b in bs)
        else None
    )
    return {
        "mean_gain_over_base": float(gaps.mean()),
        "clairvoyant_mean_gain_over_base": ceiling,
        "days_below_base": int((gaps < 0).sum()),
        "day_seeds": int(gaps.size),
        "worst": float(gaps.min()),
        "worst_day": int(np.unravel_index(gaps.argmin(), gaps.shape)[1]) + 1,
        "poisoned_decisions": [run["days"][i]["decision"] for run in runs for i in poisoned],
        "poisoned_promoted": sum(run["days"][i]["decision"] == "promoted" for run in runs for i in poisoned),
        "poisoned_demoted": sum(run["days"][i]["decision"] == "demoted" for run in runs for i in poisoned),
        "quarantined": sum(d["decision"] == "quarantined" for run in runs for d in run["days"]),
        "promotions": sum(d["decision"] == "promoted" for run in runs for d in run["days"]),
        "demotions": sum(d["decision"] == "demoted" for run in runs for d in run["days"]),
        "first_promotion": first,
        "worst_from_first_promotion": after,
        "rollbacks_checked": sum(bool(run["rollback"].get("checked")) for run in runs),
        "rollbacks_exact": sum(bool(run["rollback"].get("served_equals_before")) for run in runs),
    }


def comparison_table(comparison: dict) -> str:
    lines = [
        "| variant | mean live − base, next day | clairvoyant: best stored − base | day-seeds below base "
        "| worst (day) | promotions | demotions | quarantined | poisoned day (decisions) "
        "| first promotion (night, per seed) | rollbacks exact |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in comparison.items():
        poisoned = ", ".join(c["poisoned_decisions"]) or "-"
        first = ", ".join(str(f) if f is not None else "never" for f in c["first_promotion"])
        ceiling = c.get("clairvoyant_mean_gain_over_base")
        lines.append(
            f"| {VARIANT_NAMES[name]} | {c['mean_gain_over_base']:+.4f} "
            f"| {'-' if ceiling is None else f'{ceiling:+.4f}'} "
            f"| {c['days_below_base']} of {c['day_seeds']} "
            f"| {c['worst']:+.4f} (day {c['worst_day']}) | {c['promotions']} | {c['demotions']} "
            f"| {c['quarantined']} | {poisoned} | {first} | {c['rollbacks_exact']} of {c['rollbacks_checked']} |"
        )
    return "\n".join(lines)


def estimate_table(runs: list[dict]) -> str:
    """Offline estimate of tonight's candidate's gain over live on the clicked queries it scored, plain and
    inverse-propensity weighted, against its true gain on every question served that day."""
    rows = [d["estimate"] for run in runs for d in run["days"] if d.get("estimate")]
    if not rows:
        return "(no candidate was scored offline)"
    truth = np.array([r["truth"] for r in rows])
    plain = np.array([r["plain"] for r in rows])
    weighted = np.array([r["weighted"] for r in rows])
    reweighted = sum(r["n_weighted"] for r in rows)
    return (
        "| nights with a candidate | queries with a weight > 1 | true gain (all questions) | plain estimate "
        "(clicked queries) | bias | IPS-weighted | bias |\n|---|---|---|---|---|---|---|\n"
        f"| {len(rows)} | {reweighted} | {truth.mean():+.4f} | {plain.mean():+.4f} | {(plain - truth).mean():+.4f} "
        f"| {weighted.mean():+.4f} | {(weighted - truth).mean():+.4f} |"
    )


def table(summary: list[dict], n_seeds: int) -> str:
    lines = [
        f"| day | traffic | clicks | refresh decisions ({n_seeds} seeds) | next day | base nDCG@10 | live nDCG@10 "
        "| live - base (mean, worst seed) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        counts = {d: r["decisions"].count(d) for d in dict.fromkeys(r["decisions"])}
        decisions = ", ".join(f"{d} x{c}" for d, c in counts.items())
        lines.append(
            f"| {r['day']} | {r['traffic']} | {r['clicks']:.0f} | {decisions} | {r['next_day']} "
            f"| {r['base_mean']:.4f} ± {r['base_std']:.4f} | {r['live_mean']:.4f} ± {r['live_std']:.4f} "
            f"| {r['live_minus_base_mean']:+.4f}, {r['live_minus_base_min']:+.4f} |"
        )
    return "\n".join(lines)


def plot(summary: dict[str, list[dict]], path: Path, n_seeds: int) -> None:
    """Live minus base on the next day per variant (bars: mean over seeds; dashes: the worst seed)."""
    from adapter_retrievers.plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(7.5, 0.6 * len(next(iter(summary.values())))), 4))
    first = next(iter(summary.values()))
    x = np.array([r["day"] for r in first], dtype=float)
    width = 0.8 / len(summary)
    for n, (name, rows) in enumerate(summary.items()):
        ax.bar(
            x + (n - (len(summary) - 1) / 2) * width,
            [r["live_minus_base_mean"] for r in rows],
            width,
            label=VARIANT_NAMES[name],
        )
        ax.scatter(
            x + (n - (len(summary) - 1) / 2) * width, [r["live_minus_base_min"] for r in rows], marker="_", color="k"
        )
    ax.axhline(0, color="k", linewidth=0.8)
    ax.set_xticks(
        x, [f"{r['day']}\n{r['traffic'].replace(' (poisoned)', '*')}→{r['next_day']}" for r in first], fontsize=8
    )
    ax.set_xlabel("day (traffic → next day's language); * poisoned clicks; — worst seed")
    ax.set_ylabel("live − base nDCG@10, next day")
    scenario = "young application, 50 clicks a night" if CLICKS_PER_DAY else "drift"
    ax.set_title(f"nightly refresh ({scenario}), XQuAD, all-MiniLM-L6-v2, {n_seeds} seeds", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, path)


if __name__ == "__main__":
    main()

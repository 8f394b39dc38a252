"""Benchmark: the nightly refresh loop under drifting traffic, replayed day by day through a real chain.

XQuAD questions are replayed as days of traffic through a real LangChain chain (``AdapterRetriever``
following the adapter store, over an embedded Chroma collection of the 240 English paragraphs, with
the ``RetrievalLogger`` capture handler); each question's user clicks the paragraph that answers it.
The population drifts: Spanish speakers first, then German, then Chinese, and questions about new
paragraphs appear over time. One day's clicks are poisoned (random paragraphs). After every day
``refresh`` runs; the table shows the live adapter's nDCG@10 on the *next* day's traffic (exact
search) next to the base model's, and the decision. At the end a rollback is checked to restore the
previous version's numbers exactly (served through the registry that follows the store).

    nice -n 10 python benchmarks/drift_refresh.py              # 3 seeds
    nice -n 10 python benchmarks/drift_refresh.py --seeds 1    # quicker

Results: ``benchmarks/results/drift_refresh.json`` and ``drift_refresh.png``.
"""

from __future__ import annotations

import argparse
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
from adapter_retrievers.refresh import RefreshConfig, refresh
from adapter_retrievers.registry import AdapterRegistry
from adapter_retrievers.sources import LogSource
from adapter_retrievers.store import AdapterStore
from common import DATA, RESULTS, embedded_corpus, encoder, machine

# (language, poisoned) per day; the last day is only traffic to evaluate the last decision on
SCHEDULE = [("es", False), ("es", False), ("es", True), ("de", False), ("de", False), ("zh", False), ("zh", False)]
PER_DAY = 150
START = datetime(2026, 11, 1, tzinfo=timezone.utc)
METRIC = "ndcg@10"
WINDOW_DAYS = 3.0  # train on the last 3 days of pairs: follows the drift, forgets a poisoned day


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
        chosen = list(rng.choice(pool, size=min(PER_DAY, len(pool)), replace=False))
        used.update(chosen)
        days.append(chosen)
    return days


def build_chain(corpus: Corpus, enc, registry: AdapterRegistry, tmp: Path):
    import chromadb
    from langchain_chroma import Chroma
    from langchain_core.embeddings import Embeddings
    from langchain_core.runnables import RunnableLambda

    from adapter_retrievers.integrations.langchain import AdapterRetriever

    class MiniLM(Embeddings):
        def embed_documents(self, texts):
            return enc.embed_documents(texts).tolist()

        def embed_query(self, text):
            return enc.embed_queries([text])[0].tolist()

    client = chromadb.PersistentClient(path=str(tmp / "chroma"))
    vectorstore = Chroma(
        client=client,
        collection_name="xquad-en",
        embedding_function=MiniLM(),
        collection_configuration={"hnsw": {"space": "cosine"}},
    )
    vectorstore.add_texts(corpus.texts, ids=corpus.ids)
    retriever = AdapterRetriever(vectorstore=vectorstore, embeddings=MiniLM(), adapter=registry, k=5)
    # the LLM is the one part that cannot run here: an extractive stand-in answers from the top paragraph
    answer = RunnableLambda(lambda docs: {"answer": docs[0].page_content[:200], "sources": [d.id for d in docs]})
    return retriever | answer


def run_seed(seed: int, corpus: Corpus, questions: dict[str, TrainingSet], enc) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="drift-"))
    clock = [START.isoformat()]
    real_now = capture.now_iso
    capture.now_iso = lambda: clock[0]  # the simulated day's time in the log, not the wall clock's
    try:
        store = AdapterStore(tmp / "store")
        registry = AdapterRegistry.from_store(store, enc.model_id, corpus.embeddings.shape[1], check_interval=0)
        chain = build_chain(corpus, enc, registry, tmp)
        log = RetrievalLog(tmp / "logs" / "rag-log.jsonl")
        from adapter_retrievers.integrations.langchain import RetrievalLogger

        logger = RetrievalLogger(log)
        days = days_of_questions(questions["es"], seed)
        rng = np.random.default_rng(seed)
        config = RefreshConfig(seed=seed, window_days=WINDOW_DAYS)
        rows = []
        for day, (language, poisoned) in enumerate(SCHEDULE):
            qs = questions[language]
            for n, qid in enumerate(days[day]):
                clock[0] = (START + timedelta(days=day, minutes=n)).isoformat(timespec="milliseconds")
                run_id = uuid.uuid4()  # the trace id: the click is attached to it
                metadata = {"session_id": f"{language}-{n}"}
                chain.invoke(qs.queries[qid], config={"callbacks": [logger], "run_id": run_id, "metadata": metadata})
                clicked = f"p{rng.integers(240):03d}" if poisoned else next(iter(qs.relevant[qid]))
                log.add_click(str(run_id), clicked)
            started = time.perf_counter()
            outcome = refresh(
                store, [LogSource(log.path)], corpus, enc, config, now=START + timedelta(days=day, hours=23)
            )
            seconds = time.perf_counter() - started
            next_language = SCHEDULE[day + 1][0] if day + 1 < len(SCHEDULE) else SCHEDULE[-1][0]
            base, live = next_day_scores(store, corpus, questions[next_language], days[day + 1], enc)
            rows.append(
                {
                    "day": day + 1,
                    "traffic": language + (" (poisoned)" if poisoned else ""),
                    "decision": outcome.action,
                    "reason": outcome.reason,
                    "candidate": outcome.candidate,
                    "live": store.live,
                    "held_out": outcome.record.get("scores"),
                    "next_day_language": next_language,
                    "next_day_base": base,
                    "next_day_live": live,
                    "refresh_seconds": round(seconds, 1),
                }
            )
            print(
                f"seed {seed} day {day + 1} {rows[-1]['traffic']:<13} {outcome.action:<9} "
                f"live={store.live or 'base':<6} next day ({next_language}) base {base:.4f} live {live:.4f}  "
                f"[{seconds:.0f}s] {outcome.reason[:90]}",
                flush=True,
            )
        rollback = check_rollback(store, registry, corpus, questions[SCHEDULE[-1][0]], days[-1], enc)
        return {"seed": seed, "days": rows, "rollback": rollback, "history": store.history()}
    finally:
        capture.now_iso = real_now
        shutil.rmtree(tmp, ignore_errors=True)


def next_day_scores(store: AdapterStore, corpus: Corpus, qs: TrainingSet, qids: list[str], enc) -> tuple[float, float]:
    subset = qs.subset(qids)
    vectors = enc.embed_queries([subset.queries[q] for q in subset.query_ids])
    live = store.live_adapter(enc.model_id, corpus.embeddings.shape[1])
    base = score_vectors(vectors, subset, corpus, (METRIC,)).mean()[METRIC]
    adapted = score_vectors(live.transform(vectors), subset, corpus, (METRIC,)).mean()[METRIC]
    return float(base), float(adapted)


def check_rollback(store, registry, corpus, qs, qids, enc) -> dict:
    """Roll back and compare what the registry serves with the earlier version's own numbers."""
    promoted = [r for r in store.history() if r.get("action") == "promoted"]
    if len(promoted) < 2 or store.live is None:
        return {"checked": False, "why": f"{len(promoted)} promotions: nothing to roll back to"}
    subset = qs.subset(qids)
    vectors = enc.embed_queries([subset.queries[q] for q in subset.query_ids])
    before_version = store.live
    record = store.rollback()
    target = record["live_after"]
    direct = (
        target and score_vectors(store.load(target).transform(vectors), subset, corpus, (METRIC,)).per_query[METRIC]
    )
    served = score_vectors(registry.transform(vectors), subset, corpus, (METRIC,)).per_query[METRIC]
    return {
        "checked": True,
        "from": before_version,
        "to": target,
        "served_equals_version": bool(np.array_equal(served, direct)),
        METRIC: float(served.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    enc = encoder()
    corpus = embedded_corpus(Corpus.from_beir(DATA / "xquad" / "en"), enc)
    questions = {lang: TrainingSet.from_beir(DATA / "xquad" / lang, "test") for lang in ("es", "de", "zh")}
    started = time.perf_counter()
    runs = [run_seed(seed, corpus, questions, enc) for seed in range(args.seeds)]
    summary = summarise(runs)
    out = {
        "benchmark": "drift_refresh",
        "machine": machine(),
        "model": enc.model_id,
        "schedule": SCHEDULE,
        "per_day": PER_DAY,
        "window_days": WINDOW_DAYS,
        "seconds": round(time.perf_counter() - started, 1),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "summary": summary,
        "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "drift_refresh.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    plot(summary, RESULTS / "drift_refresh.png", len(runs))
    print(table(summary, len(runs)))


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
                "base_mean": float(base.mean()),
                "base_std": float(base.std()),
                "live_mean": float(live.mean()),
                "live_std": float(live.std()),
                "live_minus_base_min": float((live - base).min()),
            }
        )
    return rows


def table(summary: list[dict], n_seeds: int) -> str:
    lines = [
        f"| day | traffic | refresh decisions ({n_seeds} seeds) | next day | base nDCG@10 | live nDCG@10 "
        "| live - base (worst seed) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        counts = {d: r["decisions"].count(d) for d in dict.fromkeys(r["decisions"])}
        decisions = ", ".join(f"{d} x{c}" for d, c in counts.items())
        lines.append(
            f"| {r['day']} | {r['traffic']} | {decisions} | {r['next_day']} "
            f"| {r['base_mean']:.4f} ± {r['base_std']:.4f} | {r['live_mean']:.4f} ± {r['live_std']:.4f} "
            f"| {r['live_minus_base_min']:+.4f} |"
        )
    return "\n".join(lines)


def plot(summary: list[dict], path: Path, n_seeds: int) -> None:
    from adapter_retrievers.plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    x = [r["day"] for r in summary]
    for key, label in (("base", "base model"), ("live", "live adapter")):
        ax.errorbar(
            x,
            [r[f"{key}_mean"] for r in summary],
            yerr=[r[f"{key}_std"] for r in summary],
            marker="o",
            capsize=3,
            label=label,
        )
    ax.set_xticks(
        x, [f"{r['day']}\n{r['traffic'].replace(' (poisoned)', '*')}→{r['next_day']}" for r in summary], fontsize=8
    )
    ax.set_xlabel("day (traffic → next day's language); * poisoned clicks")
    ax.set_ylabel("nDCG@10 on the next day's questions")
    ax.set_title(f"nightly refresh under drift, XQuAD, all-MiniLM-L6-v2, {n_seeds} seeds", fontsize=9)
    ax.legend()
    _save(fig, path)


if __name__ == "__main__":
    main()

"""Benchmark: the nightly refresh loop under drifting traffic, replayed day by day through a real chain
into a real Arize Phoenix server, with decision rules side by side.

XQuAD questions are replayed as days of traffic through a real LangChain chain (``AdapterRetriever``
following the adapter store, over an embedded Chroma collection of the 240 English paragraphs; users
see the top 10). With ``--source phoenix`` (default) the chain is traced by OpenInference's LangChain
instrumentor over OTLP to a local ``phoenix serve`` (started here on 127.0.0.1, a free port, a temporary
working dir; stopped at the end), each click is a Phoenix document annotation (``relevance`` at the
clicked position) and every night ``refresh`` reads the server with ``PhoenixSource``; with ``--source
log`` the ``RetrievalLogger`` capture handler writes our JSONL log instead and ``LogSource`` reads it.
A user clicks the paragraph that answers the question if it is among the 10 shown (nothing otherwise).
The population drifts: Spanish speakers first, then German, then Chinese, and questions about new
paragraphs appear over time. One day's clicks are poisoned (a random shown paragraph). Spans carry the
simulated day's time (shifted when exported), as the log does.

Each decision rule (``RULES``) runs its own loop (store, served adapter, Phoenix project) on the same
questions. The table shows the live adapter's nDCG@10 on the *next* day's traffic (exact search) next to
the base model's, and the decisions. At the end a rollback is checked to restore the previous version's
numbers exactly (served through the registry that follows the store).

    nice -n 10 python benchmarks/drift_refresh.py --rules b                         # the default rule, 3 seeds
    nice -n 10 python benchmarks/drift_refresh.py --out drift_refresh_rules         # every rule side by side
    nice -n 10 python benchmarks/drift_refresh.py --seeds 1 --days 3 --per-day 60   # a quick check

Results: ``benchmarks/results/<out>.json`` and ``<out>.png``. The rollback check undoes the last change of live
(promotion or demotion) and compares what the chain's registry serves with what it served, query for query,
when that state was live before.
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
from adapter_retrievers.refresh import RefreshConfig, refresh
from adapter_retrievers.registry import AdapterRegistry
from adapter_retrievers.sources import LogSource, PhoenixSource
from adapter_retrievers.store import AdapterStore
from common import DATA, RESULTS, embedded_corpus, encoder, machine

# (language, poisoned) per day; the last day is only traffic to evaluate the last decision on
SCHEDULE = [("es", False), ("es", False), ("es", True), ("de", False), ("de", False), ("zh", False), ("zh", False)]
PER_DAY = 150
SHOWN = 10  # results a user sees; a click can only land on one of them
START = datetime(2026, 11, 1, tzinfo=timezone.utc)
METRIC = "ndcg@10"
WINDOW_DAYS = 3.0  # train on the last 3 days of pairs: follows the drift, forgets a poisoned day
# decision rules compared (RefreshConfig fields); "a" was the default before this comparison, "b" is now
RULES = {
    "a": {"demote": "significantly_below", "promote_over_base": False},
    "b": {"demote": "not_above", "promote_over_base": False},
    "c": {"demote": "significantly_below", "promote_over_base": True},
    "d": {"demote": "not_above", "promote_over_base": True},
    "e": {"demote": "not_significantly_above", "promote_over_base": False},
}
RULE_NAMES = {
    "a": "demote when significantly below base",
    "b": "demote when not above base",
    "c": "(a) + promote only when significantly above base",
    "d": "(b) + promote only when significantly above base",
    "e": "demote when not significantly above base",
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
        chosen = list(rng.choice(pool, size=min(PER_DAY, len(pool)), replace=False))
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
            from phoenix.client import Client

            self.client = Client(base_url=url)
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
    """One day's questions through the chain; each user clicks the answering paragraph if shown."""
    clicks = []
    language = SCHEDULE[day][0]
    with traffic.day(day):
        for n, qid in enumerate(qids):
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
            shown = out["sources"]
            target = shown[rng.integers(len(shown))] if poisoned else next(iter(qs.relevant[qid]))
            if target in shown:
                clicks.append((str(run_id), question, shown.index(target), target))
    traffic.record_clicks(clicks, len(qids))
    return {"questions": len(qids), "clicks": len(clicks)}


def run_seed(seed: int, corpus: Corpus, questions: dict[str, TrainingSet], enc, rules, source, url) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="drift-"))
    try:
        vectorstore = build_vectorstore(corpus, enc, tmp)
        days = days_of_questions(questions["es"], seed)
        loops = {}
        for rule in rules:
            store = AdapterStore(tmp / f"store-{rule}")
            registry = AdapterRegistry.from_store(store, enc.model_id, corpus.embeddings.shape[1], check_interval=0)
            loops[rule] = {
                "store": store,
                "registry": registry,
                "chain": build_chain(vectorstore, enc, registry),
                "traffic": Traffic(source, tmp, url, f"drift-seed{seed}-rule-{rule}"),
                "config": RefreshConfig(seed=seed, window_days=WINDOW_DAYS, **RULES[rule]),
                "rng": np.random.default_rng(seed),  # the same users' choices in every loop
                "rows": [],
            }
        probe = questions[SCHEDULE[-1][0]].subset(days[-1])  # fixed questions: what each served state scores
        probe_vectors = enc.embed_queries([probe.queries[q] for q in probe.query_ids])
        for loop in loops.values():
            loop["served"] = [served_scores(loop["registry"], probe_vectors, probe, corpus)]  # before day 1: base
        for day, (language, poisoned) in enumerate(SCHEDULE):
            next_language = SCHEDULE[day + 1][0] if day + 1 < len(SCHEDULE) else SCHEDULE[-1][0]
            for rule, loop in loops.items():
                store, traffic = loop["store"], loop["traffic"]
                served = serve_day(loop["chain"], traffic, day, questions[language], days[day], poisoned, loop["rng"])
                started = time.perf_counter()
                outcome = refresh(
                    store, [traffic.source], corpus, enc, loop["config"], now=START + timedelta(days=day, hours=23)
                )
                seconds = time.perf_counter() - started
                base, live = next_day_scores(store, corpus, questions[next_language], days[day + 1], enc)
                loop["served"].append(served_scores(loop["registry"], probe_vectors, probe, corpus))
                loop["rows"].append(
                    {
                        "day": day + 1,
                        "traffic": language + (" (poisoned)" if poisoned else ""),
                        **served,
                        "decision": outcome.action,
                        "reason": outcome.reason,
                        "candidate": outcome.candidate,
                        "live": store.live,
                        "held_out": outcome.record.get("scores"),
                        "new_pairs": outcome.record.get("new_pairs"),
                        "next_day_language": next_language,
                        "next_day_base": base,
                        "next_day_live": live,
                        "refresh_seconds": round(seconds, 1),
                    }
                )
                print(
                    f"seed {seed} rule {rule} day {day + 1} {loop['rows'][-1]['traffic']:<13} "
                    f"clicks {served['clicks']:>3} {outcome.action:<9} live={store.live or 'base':<6} "
                    f"next day ({next_language}) base {base:.4f} live {live:.4f}  [{seconds:.0f}s] "
                    f"{outcome.reason[:80]}",
                    flush=True,
                )
        runs = {}
        for rule, loop in loops.items():
            rollback = check_rollback(loop, probe_vectors, probe, corpus)
            runs[rule] = {"seed": seed, "days": loop["rows"], "rollback": rollback, "history": loop["store"].history()}
        return runs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def next_day_scores(store: AdapterStore, corpus: Corpus, qs: TrainingSet, qids: list[str], enc) -> tuple[float, float]:
    subset = qs.subset(qids)
    vectors = enc.embed_queries([subset.queries[q] for q in subset.query_ids])
    live = store.live_adapter(enc.model_id, corpus.embeddings.shape[1])
    base = score_vectors(vectors, subset, corpus, (METRIC,)).mean()[METRIC]
    adapted = score_vectors(live.transform(vectors), subset, corpus, (METRIC,)).mean()[METRIC]
    return float(base), float(adapted)


def served_scores(registry: AdapterRegistry, vectors: np.ndarray, qs: TrainingSet, corpus: Corpus) -> np.ndarray:
    """Per-query nDCG@10 of what the registry the chain follows serves now."""
    return score_vectors(registry.transform(vectors), qs, corpus, (METRIC,)).per_query[METRIC]


def check_rollback(loop: dict, vectors: np.ndarray, qs: TrainingSet, corpus: Corpus) -> dict:
    """Undo the last change of live (a promotion or a demotion) with ``rollback`` and compare what the registry
    serves now with what it served, query for query, on the night that state was live before."""
    store, rows = loop["store"], loop["rows"]
    lives = [None] + [row["live"] for row in rows]  # live before day 1, then after each night
    changes = [i for i in range(1, len(lives)) if lives[i] != lives[i - 1]]
    if not changes:
        return {"checked": False, "why": "live never changed: nothing to roll back"}
    before = lives[changes[-1] - 1]
    current = store.live
    record = store.rollback(before) if before is not None else store.rollback()
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
    global SCHEDULE, PER_DAY  # a quick check shortens the whole run
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rules", default=",".join(RULES), help=f"decision rules to compare: {', '.join(RULES)}")
    parser.add_argument("--source", choices=("phoenix", "log"), default="phoenix")
    parser.add_argument("--days", type=int, default=len(SCHEDULE), help="first N days only (quick checks)")
    parser.add_argument("--per-day", type=int, default=PER_DAY, help="questions a day")
    parser.add_argument("--out", default="drift_refresh", help="name of the JSON and PNG in benchmarks/results")
    args = parser.parse_args()
    SCHEDULE, PER_DAY = SCHEDULE[: args.days], args.per_day
    rules = [r for r in args.rules.split(",") if r]
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        parser.error(f"unknown rules {unknown}; choose from {list(RULES)}")
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
        per_seed = [run_seed(seed, corpus, questions, enc, rules, args.source, url) for seed in range(args.seeds)]
    runs = {rule: [seed_runs[rule] for seed_runs in per_seed] for rule in rules}
    summary = {rule: summarise(runs[rule]) for rule in rules}
    out = {
        "benchmark": "drift_refresh",
        "machine": machine(),
        "model": enc.model_id,
        "source": args.source,
        "schedule": SCHEDULE,
        "per_day": PER_DAY,
        "shown": SHOWN,
        "window_days": WINDOW_DAYS,
        "rules": {rule: {"config": RULES[rule], "name": RULE_NAMES[rule]} for rule in rules},
        "seconds": round(time.perf_counter() - started, 1),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "comparison": {rule: compare_rule(summary[rule], runs[rule]) for rule in rules},
        "summary": summary,
        "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    plot(summary, RESULTS / f"{args.out}.png", args.seeds)
    print(comparison_table(out["comparison"]))
    for rule in rules:
        print(f"\nrule {rule}: {RULE_NAMES[rule]}")
        print(table(summary[rule], args.seeds))


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


def compare_rule(summary: list[dict], runs: list[dict]) -> dict:
    """One line per rule: how often and how far live was below base the next day, the poisoned day, rollbacks."""
    gaps = np.array([[d["next_day_live"] - d["next_day_base"] for d in run["days"]] for run in runs])
    poisoned = [i for i, (_, bad) in enumerate(SCHEDULE) if bad]
    return {
        "mean_gain_over_base": float(gaps.mean()),
        "days_below_base": int((gaps < 0).sum()),
        "day_seeds": int(gaps.size),
        "worst": float(gaps.min()),
        "worst_day": int(np.unravel_index(gaps.argmin(), gaps.shape)[1]) + 1,
        "poisoned_promoted": sum(run["days"][i]["decision"] == "promoted" for run in runs for i in poisoned),
        "promotions": sum(d["decision"] == "promoted" for run in runs for d in run["days"]),
        "demotions": sum(d["decision"] == "demoted" for run in runs for d in run["days"]),
        "rollbacks_checked": sum(bool(run["rollback"].get("checked")) for run in runs),
        "rollbacks_exact": sum(bool(run["rollback"].get("served_equals_before")) for run in runs),
    }


def comparison_table(comparison: dict) -> str:
    lines = [
        "| rule | mean live - base, next day | day-seeds below base | worst (day) | promotions | demotions "
        "| poisoned day promoted | rollbacks exact |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rule, c in comparison.items():
        lines.append(
            f"| ({rule}) {RULE_NAMES[rule]} | {c['mean_gain_over_base']:+.4f} "
            f"| {c['days_below_base']} of {c['day_seeds']} "
            f"| {c['worst']:+.4f} (day {c['worst_day']}) | {c['promotions']} | {c['demotions']} "
            f"| {c['poisoned_promoted']} | {c['rollbacks_exact']} of {c['rollbacks_checked']} |"
        )
    return "\n".join(lines)


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
    """Live minus base on the next day per rule (mean over seeds, bars: worst seed to best)."""
    from adapter_retrievers.plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4))
    first = next(iter(summary.values()))
    x = np.array([r["day"] for r in first], dtype=float)
    width = 0.8 / len(summary)
    for n, (rule, rows) in enumerate(summary.items()):
        ax.bar(
            x + (n - (len(summary) - 1) / 2) * width,
            [r["live_minus_base_mean"] for r in rows],
            width,
            label=f"({rule}) {RULE_NAMES[rule]}",
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
    ax.set_title(f"nightly refresh under drift, XQuAD, all-MiniLM-L6-v2, {n_seeds} seeds", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, path)


if __name__ == "__main__":
    main()

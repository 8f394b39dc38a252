"""One nightly run of the closed loop: read new traffic, retrain, promote only what wins.

:func:`refresh` under the store's lock:

1. reads every source from its watermark (plus retrievals still waiting for late signals), harvests
   pairs, adds them to the pairs store, then commits the pairs and only then the watermarks;
2. stops with ``nothing_new`` when the pairs it would train on are those the last decision saw;
3. holds out the newest queries (by time), trains a candidate on the rest (its validation split is
   the newest slice of the rest, again by time), and scores the base model, the live adapter and the
   candidate on the held-out queries, none of which any of them trained on, split into queries about
   documents the candidate saw in training and queries about new documents;
4. promotes the candidate only if its gain over live is significant (paired bootstrap) and it is not
   below the base model on new documents; otherwise live stays only while it keeps earning its place:
   when its mean on the newest queries is not above the base model's (the traffic moved away from
   what it learned), the base model is served ("demoted") until a candidate wins again. (Measured in
   ``benchmarks/drift_refresh.py``: waiting until live is *significantly* below base kept a stale
   adapter below base on 10 of 21 day-seeds, this rule on 2.) The candidate is stored either way (an
   operator can still ``promote`` it), the decision and its numbers go to the history, and a PNG of
   the metric across decisions is redrawn.

A failure anywhere leaves live untouched; a failure before step 1's commit leaves the watermarks too.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from adapter_retrievers._files import atomic_write_text
from adapter_retrievers.data import Corpus, ReadReport, TrainingSet
from adapter_retrievers.evaluation import GROUPS, compare, paired_bootstrap
from adapter_retrievers.sources import PairsStore, Source, Watermarks
from adapter_retrievers.store import AdapterStore

PAIRS_FILE = "pairs.jsonl"
PENDING_FILE = "pending.jsonl"
WATERMARKS_FILE = "watermarks.json"
RUN_FILE = "run.jsonl"
PLOT_FILE = "refresh.png"
DECISIONS = ("promoted", "kept", "demoted")
DEMOTE_RULES = ("significantly_below", "not_above", "not_significantly_above")


@dataclass
class RefreshConfig:
    """What decides a refresh; recorded with every decision.

    ``window_days``: train and evaluate on pairs first seen in the last N days only (None: all), to
    follow drift. ``pending_days``: how long a retrieval without a signal waits for a late one.
    ``new_documents_tolerance``: how far below the base model, on queries about new documents, a
    candidate may be and still be promoted (0: not below at all). ``demote``: when live stops being
    served if no candidate wins: ``"not_above"`` (default: its mean on the newest held-out queries is
    not above the base model's; live must keep earning its place), ``"significantly_below"`` (its gain
    over the base model there is significantly negative: slower, a stale adapter stays below base for
    days) or ``"not_significantly_above"`` (its gain there is not significantly positive).
    ``promote_over_base``: a candidate must also be significantly above the base model, not only above
    live. ``training``: keyword arguments of
    :class:`~adapter_retrievers.training.TrainingConfig` (its defaults otherwise; validation is the
    newest slice of the training pairs, by time).
    """

    metric: str = "ndcg@10"
    held_out_fraction: float = 0.2
    validation_fraction: float = 0.15
    min_queries: int = 20
    window_days: float | None = None
    pending_days: float = 2.0
    confidence: float = 0.95
    new_documents_tolerance: float = 0.0
    demote: str = "not_above"
    promote_over_base: bool = False
    training: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.demote not in DEMOTE_RULES:
            raise ValueError(f"demote must be one of {DEMOTE_RULES}, got {self.demote!r}")
        if not 0 < self.held_out_fraction < 1 or not 0 < self.validation_fraction < 1:
            raise ValueError("held_out_fraction and validation_fraction must be in (0, 1)")
        if self.min_queries < 4:
            raise ValueError("min_queries must be >= 4 (train, validation and held-out queries are all needed)")


@dataclass
class RefreshOutcome:
    """What one run did: ``action`` is ``promoted``, ``kept``, ``demoted`` (base model served) or ``nothing_new``."""

    action: str
    reason: str
    live: str | None
    candidate: str | None = None
    record: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        scores = self.record.get("scores") or {}
        numbers = ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
        where = f" ({self.record.get('metric', '')} on {self.record.get('n_held_out', 0)} held-out queries: {numbers})"
        return f"{self.action}: {self.reason}" + (where if scores else "") + f"; live: {self.live or 'base model'}"


def _time_split(ts: TrainingSet, info: dict[str, dict[str, Any]], fraction: float) -> tuple[TrainingSet, TrainingSet]:
    """``(older, newest)`` by the time each query was first seen: the same split harvest uses."""
    from adapter_retrievers.harvest import HarvestReport, HarvestResult

    return HarvestResult(ts, HarvestReport(), info).split("time", fraction)


class _RunFile:
    """This run's records (waiting retrievals plus everything new) in our log schema, for harvest."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self.count = 0

    def write(self, record: dict) -> None:
        self.handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self.count += 1

    def close(self) -> None:
        self.handle.close()


def _read_sources(
    sources: Sequence[Source], marks: Watermarks, pending: Path, run_path: Path, report: ReadReport
) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """Write waiting + new records to ``run_path``; return the watermarks to commit and new records per source."""
    run = _RunFile(run_path)
    counts: dict[str, int] = {}
    updates: dict[str, dict[str, Any]] = {}
    try:
        if pending.exists():
            with open(pending, encoding="utf-8") as handle:
                for line in handle:
                    run.handle.write(line)
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"two sources share a name (their watermarks would collide): {names}")
        for source in sources:
            before = run.count
            updates[source.name] = source.read(marks.get(source.name), run.write, report)
            counts[source.name] = run.count - before
    finally:
        run.close()
    return updates, counts


def _keep_pending(run_path: Path, pending: Path, days: float, now: datetime) -> int:
    """Rewrite the waiting records: those first read less than ``days`` ago are read again next run, so a
    late signal still joins its retrieval. Returns how many of the kept retrievals have no signal yet."""
    cutoff = (now - timedelta(days=days)).isoformat(timespec="milliseconds")
    stamp = now.isoformat(timespec="milliseconds")
    kept = []
    seen: set[str] = set()
    retrievals: list[set[str]] = []
    targets: set[str] = set()
    with open(run_path, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            record.setdefault("pending_since", stamp)
            key = json.dumps(record, sort_keys=True)
            if record["pending_since"] >= cutoff and key not in seen:
                seen.add(key)
                kept.append(json.dumps(record, ensure_ascii=False) + "\n")
                if record.get("type") == "retrieval":
                    retrievals.append({str(i) for i in (record.get("id"), record.get("trace_id")) if i})
                elif record.get("type") == "signal" and record.get("target"):
                    targets.add(str(record["target"]))
    atomic_write_text(pending, "".join(kept))
    return sum(1 for ids in retrievals if not ids & targets)


def _last_decision(store: AdapterStore) -> dict[str, Any] | None:
    decisions = [r for r in store.history() if r.get("action") in DECISIONS]
    return decisions[-1] if decisions else None


def refresh(
    store: AdapterStore | os.PathLike | str,
    sources: Sequence[Source],
    corpus: Corpus,
    encoder: Any,
    config: RefreshConfig | None = None,
    policy: Any = None,
    now: datetime | None = None,
    progress: bool = False,
    echo: Callable[[str], None] = lambda _: None,
    harvester: Callable[..., Any] | None = None,
) -> RefreshOutcome:
    """Run the loop once (see the module docstring). Raises :class:`~adapter_retrievers.store.StoreLocked`
    while another run holds the lock and :class:`~adapter_retrievers.sources.SourceError` when a source is down.

    ``harvester``: the function that turns tonight's records into pairs, with
    :func:`~adapter_retrievers.harvest.harvest`'s signature (the default);
    ``functools.partial(harvest_on_ray, address=...)`` runs that stage on Ray Data with the same result.
    """
    from adapter_retrievers.harvest import harvest

    harvester = harvester or harvest

    store = store if isinstance(store, AdapterStore) else AdapterStore(store)
    config = config or RefreshConfig()
    now = now or datetime.now(timezone.utc)
    with store.lock("refresh") as lock:
        try:
            if lock.cleared:
                echo(f"cleared a stale lock (pid {lock.cleared.get('pid')}): {lock.cleared['reason']}")
                store.append_history({"action": "stale_lock_cleared", "version": None, "lock": lock.cleared})
            store.remove_staging()
            live_at_start = store.live
            state = store.state_dir
            state.mkdir(parents=True, exist_ok=True)
            marks = Watermarks(state / WATERMARKS_FILE)
            run_path, pending = state / RUN_FILE, state / PENDING_FILE
            read = ReadReport()
            updates, counts = _read_sources(sources, marks, pending, run_path, read)
            harvested = harvester([run_path], corpus, fmt="ours", policy=policy, name="refresh")
            pairs = PairsStore(state / PAIRS_FILE)
            new_pairs = pairs.add(harvested.training_set, harvested.query_info)
            pairs.save()  # commit what was read ...
            n_waiting = _keep_pending(run_path, pending, config.pending_days, now)
            marks.commit(updates)  # ... and only then move the watermarks
            run_path.unlink()
            echo(
                "read "
                + ", ".join(f"{name}: {n} new records" for name, n in counts.items())
                + f"; {new_pairs} new pairs ({len(pairs)} stored); {n_waiting} retrievals without a signal wait "
                f"for a late one (up to {config.pending_days:g} days)"
            )
            if read.n_skipped:
                echo(f"skipped while reading: {read}")
            data, info = pairs.training_data(config.window_days, now, name="refresh pairs")
            data = data.check_against(corpus, "skip")
            base_record = {
                "sources": counts,
                "new_pairs": new_pairs,
                "skipped": dict(read.skipped),
                "data": {
                    "fingerprint": data.fingerprint,
                    "n_queries": len(data),
                    "n_pairs": data.n_pairs,
                    "window_days": config.window_days,
                    "corpus_fingerprint": corpus.fingerprint,
                    "served_by": _served_by(info, data),
                },
            }
            last = _last_decision(store)
            if last is not None and last.get("data", {}).get("fingerprint") == data.fingerprint:
                reason = "nothing new since the last decision: no training"
                record = {"action": "nothing_new", "version": None, "live_after": store.live, "reason": reason}
                record = store.append_history({**record, **base_record})
                return RefreshOutcome("nothing_new", reason, store.live, record=record)
            if len(data) < config.min_queries:
                reason = f"{len(data)} queries with pairs; at least {config.min_queries} are needed to train and decide"
                record = store.append_history(
                    {"action": "kept", "version": None, "live_after": store.live, "reason": reason, **base_record}
                )
                return RefreshOutcome("kept", reason, store.live, record=record)
            outcome = _decide(store, data, info, corpus, encoder, config, base_record, live_at_start, progress)
            store.prune()
            _plot(store, config.metric)
            return outcome

        except Exception as exc:
            with contextlib.suppress(OSError):  # a full disk may refuse this line too
                store.append_history(
                    {
                        "action": "failed",
                        "version": None,
                        "live_after": store.live,
                        "reason": f"{type(exc).__name__}: {exc}",
                    }
                )
            raise


def _served_by(info: dict[str, dict[str, Any]], data: TrainingSet) -> dict[str, int]:
    """How many queries were collected while each adapter version served (training data under an adapter
    is biased by it): ``"base"`` for the base model, ``"unknown"`` where the log did not say."""
    counts: dict[str, int] = {}
    for query_id in data.query_ids:
        version = info.get(query_id, {}).get("adapter_version") or "unknown"
        counts[version] = counts.get(version, 0) + 1
    return counts


def _decide(
    store: AdapterStore,
    data: TrainingSet,
    info: dict[str, dict[str, Any]],
    corpus: Corpus,
    encoder: Any,
    config: RefreshConfig,
    base_record: dict[str, Any],
    live_at_start: str | None,
    progress: bool,
) -> RefreshOutcome:
    from adapter_retrievers.encoders import as_encoder
    from adapter_retrievers.training import AdapterTrainer

    encoder = as_encoder(encoder)  # only now: a night without training never loads the model
    rest, held = _time_split(data, info, config.held_out_fraction)
    train, validation = _time_split(rest, info, config.validation_fraction)
    if corpus.embeddings is None:
        corpus = corpus.with_embeddings(encoder.embed_documents(corpus.texts))
    dim = corpus.embeddings.shape[1]

    def vectors(ts: TrainingSet) -> np.ndarray:
        return np.asarray(encoder.embed_queries([ts.queries[q] for q in ts.query_ids]), dtype=np.float32)

    training = {"seed": config.seed, **config.training}
    trainer = AdapterTrainer(None, model_id=encoder.model_id, progress=progress, **training)
    result = trainer.fit_vectors(
        train, vectors(train), validation, vectors(validation), corpus, data_fingerprint=data.fingerprint
    )
    candidate = result.adapter
    live = store.live_adapter(encoder.model_id, dim)
    held_vectors = vectors(held)
    metric = config.metric
    seen_documents = {d for ts in (train, validation) for docs in ts.relevant.values() for d in docs}
    reports = {
        name: compare(adapter, held_vectors, held, corpus, (metric,), seen_documents=seen_documents)
        for name, adapter in (("live", live), ("candidate", candidate))
    }
    per_query = {
        "base": reports["live"].baseline.per_query[metric],
        "live": reports["live"].adapted.per_query[metric],
        "candidate": reports["candidate"].adapted.per_query[metric],
    }
    groups = {}
    for group in GROUPS:
        n = reports["live"].n_queries_in(group)
        base_mean, live_mean = reports["live"].means(metric, group)
        groups[group] = {
            "n_queries": n,
            "base": base_mean if n else None,
            "live": live_mean if n else None,
            "candidate": reports["candidate"].means(metric, group)[1] if n else None,
        }
    interval = paired_bootstrap(
        per_query["live"], per_query["candidate"], confidence=config.confidence, seed=config.seed
    )
    live_vs_base = paired_bootstrap(
        per_query["base"], per_query["live"], confidence=config.confidence, seed=config.seed
    )
    candidate_vs_base = paired_bootstrap(
        per_query["base"], per_query["candidate"], confidence=config.confidence, seed=config.seed
    )
    scores = {k: float(v.mean()) for k, v in per_query.items()}
    new = groups["new"]
    action, reason = decide(
        config,
        scores,
        new,
        gain_over_live=interval,
        candidate_over_base=candidate_vs_base,
        live_over_base=live_vs_base,
        has_candidate=not candidate.is_identity,
        live=live_at_start,
    )
    if action != "kept" and store.live != live_at_start:
        action, reason = "kept", f"live changed during this run (now {store.live or 'base model'}): an operator decided"
    evaluation = {
        "metric": metric,
        "n_held_out": len(held),
        "n_train": len(train),
        "n_validation": len(validation),
        "scores": scores,
        "groups": groups,
        "gain_over_live": {"mean": scores["candidate"] - scores["live"], "interval": list(interval)},
        "live_gain_over_base": {"mean": scores["live"] - scores["base"], "interval": list(live_vs_base)},
        "candidate_gain_over_base": {
            "mean": scores["candidate"] - scores["base"],
            "interval": list(candidate_vs_base),
        },
        "confidence": config.confidence,
        "live_version": live_at_start,
        "held_out_since": min((info.get(q, {}).get("timestamp") or "" for q in held.query_ids), default=None),
    }
    version = None
    if not candidate.is_identity:
        version = store.add_version(
            candidate,
            {
                "evaluation": evaluation,
                "data": base_record["data"],
                "decision": {"action": action, "reason": reason},
                "config": asdict(config),
            },
        )
    details = {"reason": reason, **evaluation, **base_record, "version": version}
    if action == "promoted":
        record = store.set_live(version, "promoted", **{k: v for k, v in details.items() if k != "version"})
    elif action == "demoted":
        record = store.set_live(
            None, "demoted", **{k: v for k, v in details.items() if k != "version"}, candidate=version
        )
    else:
        record = store.append_history(
            {"action": "kept", "live_before": store.live, "live_after": store.live, **details}
        )
    return RefreshOutcome(action, reason, store.live, version, record)


def decide(
    config: RefreshConfig,
    scores: dict[str, float],
    new: dict[str, Any],
    *,
    gain_over_live: tuple[float, float],
    candidate_over_base: tuple[float, float],
    live_over_base: tuple[float, float],
    has_candidate: bool,
    live: str | None,
) -> tuple[str, str]:
    """The decision rule, on one night's held-out numbers: ``(action, reason)``.

    ``scores``: mean metric of ``base``, ``live`` and ``candidate``; ``new``: the same on queries about
    new documents (``n_queries``, ``base``, ``candidate``); the intervals are paired-bootstrap intervals of
    the differences; ``live``: the live version (None: the base model is served).
    """
    gain = scores["candidate"] - scores["live"]
    ci = _interval(config.confidence, gain_over_live)
    if not has_candidate:
        action, reason = "kept", "no candidate: training found nothing that beats the base model on validation"
    elif gain_over_live[0] <= 0:
        action, reason = "kept", f"gain over live {gain:+.4f} {_not_above_zero(gain_over_live)} ({ci})"
    elif config.promote_over_base and candidate_over_base[0] <= 0:
        action = "kept"
        reason = (
            f"gain over the base model {scores['candidate'] - scores['base']:+.4f} "
            f"{_not_above_zero(candidate_over_base)} ({_interval(config.confidence, candidate_over_base)})"
        )
    elif new["n_queries"] and new["candidate"] < new["base"] - config.new_documents_tolerance:
        action = "kept"
        reason = (
            f"below the base model on {new['n_queries']} queries about new documents "
            f"({new['candidate']:.4f} < {new['base']:.4f})"
        )
    else:
        action, reason = "promoted", f"gain over live {gain:+.4f}, {ci}"
    if config.demote == "not_above":
        # live must keep earning its place: served only while it is above the base model on the newest queries
        demote, how = scores["live"] <= scores["base"], "not above"
    elif config.demote == "not_significantly_above":
        demote, how = live_over_base[0] <= 0, "not significantly above"
    else:
        # only once the traffic moved so far from what live learned that it is significantly worse
        demote, how = live_over_base[1] < 0, "significantly below"
    if action == "kept" and live is not None and demote:
        action = "demoted"
        reason = (
            f"live {live} is {how} the base model on the newest queries ({scores['live']:.4f} vs "
            f"{scores['base']:.4f}, {_interval(config.confidence, live_over_base, 'interval of its gain')}): "
            f"serving the base model; candidate: {reason}"
        )
    return action, reason


def _not_above_zero(bounds: tuple[float, float]) -> str:
    """How a gain whose interval does not lie above zero compares with zero, in words that are true."""
    return "is significantly below zero" if bounds[1] < 0 else "is not significantly above zero"


def _interval(confidence: float, bounds: tuple[float, float], what: str = "interval") -> str:
    """``"95% interval [-0.0100, +0.0300]"``: a paired-bootstrap interval as the decisions print it."""
    return f"{confidence:.0%} {what} [{bounds[0]:+.4f}, {bounds[1]:+.4f}]"


def _plot(store: AdapterStore, metric: str) -> None:
    from adapter_retrievers.plots import plot_refresh_history

    decisions = [r for r in store.history() if r.get("action") in DECISIONS and r.get("scores")]
    if decisions:
        plot_refresh_history(decisions, store.root / PLOT_FILE, metric, overwrite=True)  # the store's own chart

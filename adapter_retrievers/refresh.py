"""One nightly run of the closed loop: read new traffic, retrain, promote only what wins on all the evidence.

:func:`refresh` under the store's lock:

1. reads every source from its watermark (plus retrievals still waiting for late signals) and harvests
   pairs;
2. profiles the feedback of the night's new retrievals (click rate, clicked positions, agreement of the
   clicked documents with live's and the base model's rankings) and **quarantines** the night when all of
   it is far outside the history of earlier nights (:mod:`adapter_retrievers.quarantine`): its pairs are
   kept apart until an operator releases them, and nothing is promoted or demoted;
3. commits the pairs and only then the watermarks; stops with ``nothing_new`` when the pairs it would train
   on are those the last decision saw;
4. holds out the newest queries (by time), trains a candidate on the rest (its validation split is the
   newest slice of the rest, again by time), and scores **every query no adapter trained on yet**, once:
   the held-out ones by tonight's candidate, the others that came since the candidate before it was
   trained by that previous candidate (rolling-origin evaluation), each also by live and the base model.
   The scores go into an evidence ledger (``state/evidence.jsonl``), split into queries about documents
   the candidate saw in training and queries about new documents, with the inverse propensity of the
   clicked document where the traffic was interleaved;
5. decides on the pooled evidence since live last changed (:mod:`adapter_retrievers.evidence`): the
   newest candidate is promoted when the loop's candidates beat live *significantly by an anytime-valid
   test* (testing by betting: its error rate holds however many nights it is run), on the offline
   evidence, on the interleaved comparison of the serving wrappers (``state/interleaving.jsonl``, clicks
   credited to the ranker that showed the document), or on both (their e-values multiplied), and when the
   candidates are not below the base model on queries about new documents. Otherwise live stays while it
   keeps earning its place: the ``demote`` rule on its recent pooled gain over the base model (default:
   not above it: the traffic moved away from what it learned) serves the base model until a candidate
   wins again. The newest candidate becomes the store's ``CANDIDATE``, which serving interleaves with
   live; it is stored either way (an operator can still ``promote`` it), the decision, its numbers and the
   running comparison go to the history, and a PNG of the metric across decisions is redrawn.

A failure anywhere leaves live untouched; a failure before step 3's commit leaves the watermarks too.
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

from adapter_retrievers._files import append_line, atomic_write_text
from adapter_retrievers.data import Corpus, ReadReport, TrainingSet
from adapter_retrievers.evaluation import score_vectors
from adapter_retrievers.evidence import Sequential, betting_test, combine, weighted_bootstrap, weighted_mean
from adapter_retrievers.interleaving import CANDIDATE, LIVE, outcome
from adapter_retrievers.quarantine import QuarantineConfig, Quarantined, check, profile
from adapter_retrievers.sources import PairsStore, Source, Watermarks
from adapter_retrievers.store import AdapterStore, StoreError, now_iso

PAIRS_FILE = "pairs.jsonl"
PENDING_FILE = "pending.jsonl"
WATERMARKS_FILE = "watermarks.json"
RUN_FILE = "run.jsonl"
EVIDENCE_FILE = "evidence.jsonl"
INTERLEAVING_FILE = "interleaving.jsonl"
PLOT_FILE = "refresh.png"
DECISIONS = ("promoted", "kept", "demoted")
DEMOTE_RULES = ("not_above", "significantly_below", "not_significantly_above")
BASE = "base"  # the base model's name in the evidence ledger and in the serving logs


@dataclass
class RefreshConfig:
    """What decides a refresh; recorded with every decision.

    ``window_days``: train on pairs first seen in the last N days only (None: all), to follow drift; the
    demotion rule looks at live's evidence of the same window. ``pending_days``: how long a retrieval
    without a signal waits for a late one. ``confidence``: the promotion test's level: the probability that
    a candidate no better than live is *ever* promoted, over all the nights the loop runs, is at most
    ``1 - confidence`` (anytime-valid, see :mod:`adapter_retrievers.evidence`). ``new_documents_tolerance``:
    how far below the base model, on pooled queries about new documents, the candidates may be and the
    newest still be promoted (0: not below at all). ``demote``: when live stops being served if no candidate
    wins, judged on its pooled evidence of the window since it went live: ``"not_above"`` (default: its mean
    there is not above the base model's; live must keep earning its place), ``"significantly_below"`` (its
    gain is significantly negative, paired bootstrap) or ``"not_significantly_above"`` (its gain is not
    significantly positive). ``propensity_weights``: weigh each query by the inverse probability that its
    clicked document was shown (recorded on interleaved traffic; clipped at ``max_weight``) in the gains and
    conditions the decision reports and checks; the promotion test itself is unweighted (the bias of clicks
    favours live, so it errs on the side of keeping live). ``quarantine``: see
    :class:`~adapter_retrievers.quarantine.QuarantineConfig`. ``training``: keyword arguments of
    :class:`~adapter_retrievers.training.TrainingConfig` (its defaults otherwise, the per-query guard
    included, except ``require_significant_gain=False``: a candidate that beats the base model on validation
    is stored and scored, and the pooled test decides; validation is the newest slice of the pairs, by time).
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
    propensity_weights: bool = True
    max_weight: float = 20.0
    quarantine: QuarantineConfig = field(default_factory=QuarantineConfig)
    training: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.demote not in DEMOTE_RULES:
            raise ValueError(f"demote must be one of {DEMOTE_RULES}, got {self.demote!r}")
        if not 0 < self.held_out_fraction < 1 or not 0 < self.validation_fraction < 1:
            raise ValueError("held_out_fraction and validation_fraction must be in (0, 1)")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.min_queries < 4:
            raise ValueError("min_queries must be >= 4 (train, validation and held-out queries are all needed)")
        if self.max_weight < 1:
            raise ValueError(f"max_weight must be >= 1, got {self.max_weight}")
        if isinstance(self.quarantine, dict):
            self.quarantine = QuarantineConfig(**self.quarantine)


@dataclass
class RefreshOutcome:
    """What one run did: ``action`` is ``promoted``, ``kept``, ``demoted`` (base model served),
    ``quarantined`` (the night's feedback kept apart) or ``nothing_new``."""

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
        self.new_retrievals: set[str] = set()  # ids of retrievals the sources gave this run

    def write(self, record: dict) -> None:
        self.handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self.count += 1
        if record.get("type") == "retrieval" and record.get("id") is not None:
            self.new_retrievals.add(str(record["id"]))

    def close(self) -> None:
        self.handle.close()


def _read_sources(
    sources: Sequence[Source], marks: Watermarks, pending: Path, run_path: Path, report: ReadReport
) -> tuple[dict[str, dict[str, Any]], dict[str, int], set[str]]:
    """Write waiting + new records to ``run_path``; return the watermarks to commit, new records per source,
    and the ids of the retrievals read for the first time (not waiting from an earlier run)."""
    run = _RunFile(run_path)
    counts: dict[str, int] = {}
    updates: dict[str, dict[str, Any]] = {}
    waiting: set[str] = set()
    try:
        if pending.exists():
            with open(pending, encoding="utf-8") as handle:
                for line in handle:
                    run.handle.write(line)
                    with contextlib.suppress(json.JSONDecodeError):
                        record = json.loads(line)
                        if isinstance(record, dict) and record.get("type") == "retrieval":
                            waiting.add(str(record.get("id")))
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"two sources share a name (their watermarks would collide): {names}")
        for source in sources:
            before = run.count
            updates[source.name] = source.read(marks.get(source.name), run.write, report)
            counts[source.name] = run.count - before
    finally:
        run.close()
    return updates, counts, run.new_retrievals - waiting


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


# ------------------------------------------------------------------------------------ the ledgers


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a state file, one a line (a line cut by a crash is skipped)."""
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                row = json.loads(line)
                if isinstance(row, dict):
                    rows.append(row)
    return rows


def _update_interleaving(path: Path, feedback: Sequence[Any], skip: set[str], read_at: str) -> int:
    """Merge the credited clicks of interleaved retrievals into the online ledger (one row per retrieval,
    updated when late signals come); returns how many retrievals are new to it."""
    rows = {r["retrieval_id"]: r for r in read_jsonl(path) if "retrieval_id" in r}
    added = 0
    for item in feedback:
        if item.candidate_version is None or item.retrieval_id in skip:
            continue
        credit = item.credit
        row = rows.get(item.retrieval_id)
        if row is None:
            added += 1
            row = rows[item.retrieval_id] = {"retrieval_id": item.retrieval_id, "read_at": read_at}
        row.update(
            {
                "live": item.adapter_version or BASE,
                "candidate": item.candidate_version,
                "timestamp": item.timestamp,
                "live_clicks": credit[LIVE],
                "candidate_clicks": credit[CANDIDATE],
            }
        )
    if added or rows:
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows.values()))
    return added


# ---------------------------------------------------------------------------------------- refresh


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
            updates, counts, new_retrievals = _read_sources(sources, marks, pending, run_path, read)
            harvested = harvester([run_path], corpus, fmt="ours", policy=policy, name="refresh")
            apart = Quarantined(state)
            pairs = PairsStore(state / PAIRS_FILE)
            before = set(pairs.rows)
            new_pairs = pairs.add(harvested.training_set, harvested.query_info, exclude=apart.keys())
            tonight = [f for f in harvested.feedback if f.retrieval_id in new_retrievals]
            data, info = pairs.training_data(config.window_days, now, name="refresh pairs")
            data = data.check_against(corpus, "skip")
            last = _last_decision(store)
            is_new = last is None or last.get("data", {}).get("fingerprint") != data.fingerprint
            trains = is_new and len(data) >= config.min_queries
            if trains:  # only now: a night without training never loads the model
                from adapter_retrievers.encoders import as_encoder

                encoder = as_encoder(encoder)
                if corpus.embeddings is None:
                    corpus = corpus.with_embeddings(encoder.embed_documents(corpus.texts))
            night = _night_profile(store, tonight, len(new_retrievals), harvested, corpus, encoder, trains)
            verdict = check(night, _profile_history(store), config.quarantine)
            if verdict["quarantine"]:
                keep_apart = {f.query_id for f in tonight}
                rows = [pairs.rows.pop(k) for k in list(pairs.rows) if k not in before and k[0] in keep_apart]
                new_pairs -= len(rows)
                taken = {r.get("night") for r in store.history() if r.get("night")}
                name = apart.add(rows, sorted(f.retrieval_id for f in tonight), now.date().isoformat(), taken)
            pairs.save()  # commit what was read ...
            n_waiting = _keep_pending(run_path, pending, config.pending_days, now)
            skip = apart.retrievals() | ({f.retrieval_id for f in tonight} if verdict["quarantine"] else set())
            _update_interleaving(state / INTERLEAVING_FILE, harvested.feedback, skip, now_iso())
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
            base_record = {
                "sources": counts,
                "new_pairs": new_pairs,
                "skipped": dict(read.skipped),
                "feedback_profile": night,
                "quarantine_check": verdict,
                "data": {
                    "fingerprint": data.fingerprint,
                    "n_queries": len(data),
                    "n_pairs": data.n_pairs,
                    "window_days": config.window_days,
                    "corpus_fingerprint": corpus.fingerprint,
                    "served_by": _served_by(info, data),
                },
            }
            if verdict["quarantine"]:
                reason = (
                    f"night {name} quarantined: {verdict['reason']}; its {len(rows)} pairs are kept apart until "
                    f"an operator releases them (adapter-retrievers release {name})"
                )
                record = {"action": "quarantined", "night": name, "version": None, "live_after": store.live}
                record = store.append_history({**record, "reason": reason, **base_record})
                return RefreshOutcome("quarantined", reason, store.live, record=record)
            if not is_new:
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
            outcome_ = _decide(store, data, info, corpus, encoder, config, base_record, live_at_start, now, progress)
            store.prune()
            _plot(store, config.metric)
            return outcome_

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


def release(store: AdapterStore | os.PathLike | str, night: str) -> dict[str, Any]:
    """Put a quarantined night's pairs back with the others (an operator judged its feedback sound); the next
    refresh trains and decides on them. Raises :class:`~adapter_retrievers.store.StoreError` for an unknown night."""
    store = store if isinstance(store, AdapterStore) else AdapterStore(store)
    with store.lock("release"):
        apart = Quarantined(store.state_dir)
        if night not in apart.nights():
            held = ", ".join(apart.nights()) or "none"
            raise StoreError(f"no quarantined night {night!r} in {store.root} (quarantined: {held})")
        pairs = PairsStore(store.state_dir / PAIRS_FILE)
        rows = apart.rows(night)
        kept = PairsStore(store.state_dir / f".{night}.release")  # an in-memory store, never saved
        kept.rows = {(r["query_id"], r["doc_id"]): r for r in rows}
        added = pairs.merge(kept)
        pairs.save()
        apart.remove(night)
        return store.append_history(
            {
                "action": "released",
                "night": night,
                "version": None,
                "live_after": store.live,
                "pairs": added,
                "reason": f"night {night} released by an operator: {added} pairs join the training data",
            }
        )


def _served_by(info: dict[str, dict[str, Any]], data: TrainingSet) -> dict[str, int]:
    """How many queries were collected while each adapter version served (training data under an adapter
    is biased by it): ``"base"`` for the base model, ``"unknown"`` where the log did not say."""
    counts: dict[str, int] = {}
    for query_id in data.query_ids:
        version = info.get(query_id, {}).get("adapter_version") or "unknown"
        counts[version] = counts.get(version, 0) + 1
    return counts


# --------------------------------------------------------------------------------- night profile


def _profile_history(store: AdapterStore) -> list[dict[str, Any]]:
    """The feedback profiles of the nights that were not quarantined, oldest first."""
    return [
        r["feedback_profile"]
        for r in store.history()
        if r.get("feedback_profile") and r.get("action") not in ("quarantined", "failed")
    ]


def _night_profile(
    store: AdapterStore,
    tonight: Sequence[Any],
    n_retrievals: int,
    harvested: Any,
    corpus: Corpus,
    encoder: Any,
    trains: bool,
) -> dict[str, Any]:
    """The night's feedback profile; the ranking agreements only on a night that trains (the encoder is
    needed then anyway: a night without training never loads the model)."""
    if not trains or not tonight or corpus.embeddings is None:
        return profile(tonight, n_retrievals, live=store.live or BASE)
    named = [f for f in tonight if any(d in corpus for d in f.documents)]
    queries = harvested.training_set.queries
    vectors = np.asarray(encoder.embed_queries([queries[f.query_id] for f in named]), dtype=np.float32)
    live = store.live_adapter(encoder.model_id, corpus.embeddings.shape[1])
    docs = corpus.normalized_embeddings()
    ranks: dict[str, dict[str, list[int]]] = {"live": {}, "base": {}}
    for name, adapted in (("base", vectors), ("live", live.transform(vectors) if len(vectors) else vectors)):
        scores = _unit(adapted) @ docs.T
        for row, f in enumerate(named):
            own = [corpus.position(d) for d in f.documents if d in corpus]
            ranks[name][f.retrieval_id] = [int((scores[row] > scores[row, i]).sum()) for i in own]
    return profile(tonight, n_retrievals, ranks["live"], ranks["base"], store.live or BASE)


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


# --------------------------------------------------------------------------------------- decide


@dataclass
class Evidence:
    """What the decision rule sees: pooled over the queries scored since live last changed.

    ``offline``: the anytime-valid test of candidate minus live on those queries (each scored by the candidate
    trained before it); ``online``: the same on the interleaved comparison (+1 a click credited to the
    candidate's picks won the query, -1 live's); ``combined``: both as one test. ``gain``: the pooled mean gain
    over live (inverse-propensity weighted when configured) and its bootstrap interval; ``new_documents``:
    pooled queries about documents the scoring candidate had not seen (``n``, ``base``, ``candidate``);
    ``live_vs_base``: live's recent pooled gain over the base model (``n``, ``mean``, ``interval``); ``own``:
    the gain over live of the candidate that would be promoted, on the queries it scored itself (``n``,
    ``gain``): the pooled test is about the loop's candidates, and this one must not contradict it.
    """

    offline: Sequential
    online: Sequential
    combined: Sequential
    gain: float
    gain_interval: tuple[float, float]
    new_documents: dict[str, Any]
    live_vs_base: dict[str, Any]
    has_candidate: bool
    own: dict[str, Any] = field(default_factory=lambda: {"n": 0, "gain": 0.0})


def decide(config: RefreshConfig, evidence: Evidence, live: str | None) -> tuple[str, str]:
    """The decision rule on the pooled evidence: ``(action, reason)`` (``live``: None = the base model)."""
    test = evidence.combined
    what = _what(evidence)
    new = evidence.new_documents
    if not evidence.has_candidate:
        action, reason = "kept", "no candidate: training found nothing that beats the base model on validation"
    elif not test.significant:
        action = "kept"
        reason = (
            f"the candidates' gain over live is not significant yet ({what}: e-value {test.wealth:.2f} < "
            f"{test.threshold:.0f}; pooled gain {evidence.gain:+.4f}, "
            f"{_interval(config.confidence, evidence.gain_interval)})"
        )
    elif evidence.own["n"] and evidence.own["gain"] < 0:
        action = "kept"
        reason = (
            f"the candidates beat live significantly ({what}: e-value {test.wealth:.1f}), but the newest one is "
            f"below live on the {evidence.own['n']} queries it scored itself ({evidence.own['gain']:+.4f})"
        )
    elif new["n"] and new["candidate"] < new["base"] - config.new_documents_tolerance:
        action = "kept"
        reason = (
            f"below the base model on {new['n']} pooled queries about new documents "
            f"({new['candidate']:.4f} < {new['base']:.4f})"
        )
    else:
        action = "promoted"
        reason = (
            f"the candidates beat live significantly ({what}: e-value {test.wealth:.1f} >= {test.threshold:.0f}; "
            f"pooled gain {evidence.gain:+.4f}, {_interval(config.confidence, evidence.gain_interval)})"
        )
    recent = evidence.live_vs_base
    if action == "kept" and live is not None and recent["n"]:
        lo, hi = recent["interval"]
        if config.demote == "not_above":
            demote, how = recent["mean"] <= 0, "not above"
        elif config.demote == "not_significantly_above":
            demote, how = lo <= 0, "not significantly above"
        else:
            demote, how = hi < 0, "significantly below"
        if demote:
            action = "demoted"
            reason = (
                f"live {live} is {how} the base model on its {recent['n']} recent pooled queries (gain "
                f"{recent['mean']:+.4f}, {_interval(config.confidence, recent['interval'])}): serving the base "
                f"model; candidate: {reason}"
            )
    return action, reason


def _what(evidence: Evidence) -> str:
    parts = []
    if evidence.offline.n:
        parts.append(f"{evidence.offline.n} queries scored offline")
    if evidence.online.n:
        parts.append(f"{evidence.online.n} interleaved retrievals with a click")
    return " and ".join(parts) or "no evidence yet"


def _interval(confidence: float, bounds: tuple[float, float] | list[float], what: str = "interval") -> str:
    """``"95% interval [-0.0100, +0.0300]"``: a bootstrap interval as the decisions print it."""
    return f"{confidence:.0%} {what} [{bounds[0]:+.4f}, {bounds[1]:+.4f}]"


def _weights(rows: Sequence[dict[str, Any]], config: RefreshConfig) -> np.ndarray | None:
    if not config.propensity_weights:
        return None
    return np.array([min(float(r.get("weight") or 1.0), config.max_weight) for r in rows])


def pooled_evidence(
    config: RefreshConfig,
    ledger: Sequence[dict[str, Any]],
    online: Sequence[dict[str, Any]],
    live: str,
    since: str,
    window_start: str | None,
    newest: str | None,
) -> Evidence:
    """The evidence since ``live`` went live (``since``: real time; ledger rows scored and interleaved
    retrievals read from then on); live's recent gain over the base model on the rows whose queries were first
    seen from ``window_start`` on (None: all); ``newest``: the candidate a promotion would serve (None: none)."""
    rows = [r for r in ledger if r.get("live") == live and r.get("scored_at", "") >= since]
    scored = [r for r in rows if r.get("candidate") not in (None, live)]
    differences = np.array([r["candidate_score"] - r["live_score"] for r in scored])
    offline = betting_test(differences, config.confidence)
    interleaved = [
        r
        for r in online
        if r.get("live") == live
        and r.get("candidate") != live
        and r.get("read_at", "") >= since
        and r.get("live_clicks", 0) + r.get("candidate_clicks", 0) > 0
    ]
    results = np.array([outcome({LIVE: r["live_clicks"], CANDIDATE: r["candidate_clicks"]}) for r in interleaved])
    on = betting_test(results, config.confidence)
    weights = _weights(scored, config)
    new = [r for r in scored if r.get("group") == "new"]
    new_weights = _weights(new, config)
    recent = [r for r in rows if window_start is None or (r.get("timestamp") or "") >= window_start]
    recent_gain = np.array([r["live_score"] - r["base"] for r in recent])
    recent_weights = _weights(recent, config)
    own = [r for r in scored if newest is not None and r.get("candidate") == newest]
    own_gain = np.array([r["candidate_score"] - r["live_score"] for r in own])
    return Evidence(
        offline=offline,
        online=on,
        combined=combine(offline, on, confidence=config.confidence),
        gain=weighted_mean(differences, weights) if len(scored) else 0.0,
        gain_interval=weighted_bootstrap(differences, weights, config.confidence, seed=config.seed),
        new_documents={
            "n": len(new),
            "base": weighted_mean(np.array([r["base"] for r in new]), new_weights) if new else None,
            "candidate": weighted_mean(np.array([r["candidate_score"] for r in new]), new_weights) if new else None,
        },
        live_vs_base={
            "n": len(recent),
            "mean": weighted_mean(recent_gain, recent_weights) if recent else 0.0,
            "interval": weighted_bootstrap(recent_gain, recent_weights, config.confidence, seed=config.seed),
        },
        has_candidate=newest is not None,
        own={"n": len(own), "gain": weighted_mean(own_gain, _weights(own, config)) if own else 0.0},
    )


def _comparison(evidence: Evidence, online: Sequence[dict[str, Any]], live: str, since: str) -> dict[str, Any]:
    """The running comparison as ``status`` shows it."""
    rows = [r for r in online if r.get("live") == live and r.get("read_at", "") >= since]
    results = [outcome({LIVE: r["live_clicks"], CANDIDATE: r["candidate_clicks"]}) for r in rows]
    return {
        "live": live,
        "since": since or None,
        "offline": {**evidence.offline.as_dict(), "gain": evidence.gain, "interval": list(evidence.gain_interval)},
        "online": {
            **evidence.online.as_dict(),
            "retrievals": len(rows),
            "candidate_wins": results.count(1),
            "live_wins": results.count(-1),
            "ties": results.count(0),
            "live_clicks": sum(r["live_clicks"] for r in rows),
            "candidate_clicks": sum(r["candidate_clicks"] for r in rows),
        },
        "combined": evidence.combined.as_dict(),
        "new_documents": evidence.new_documents,
        "live_vs_base": {**evidence.live_vs_base, "interval": list(evidence.live_vs_base["interval"])},
    }


def _decide(
    store: AdapterStore,
    data: TrainingSet,
    info: dict[str, dict[str, Any]],
    corpus: Corpus,
    encoder: Any,
    config: RefreshConfig,
    base_record: dict[str, Any],
    live_at_start: str | None,
    now: datetime,
    progress: bool,
) -> RefreshOutcome:
    from adapter_retrievers.training import AdapterTrainer

    rest, held = _time_split(data, info, config.held_out_fraction)
    train, validation = _time_split(rest, info, config.validation_fraction)
    dim = corpus.embeddings.shape[1]
    cache: dict[str, np.ndarray] = {}

    def vectors(ts: TrainingSet) -> np.ndarray:
        missing = [q for q in ts.query_ids if q not in cache]
        if missing:
            embedded = np.asarray(encoder.embed_queries([ts.queries[q] for q in missing]), dtype=np.float32)
            cache.update(zip(missing, embedded))
        return np.stack([cache[q] for q in ts.query_ids]) if ts.query_ids else np.zeros((0, dim), np.float32)

    # the pooled test decides; the trainer's own significance gate on a small validation split would throw
    # away the candidates whose gain only the pooled evidence can show
    training = {"seed": config.seed, "require_significant_gain": False, **config.training}
    trainer = AdapterTrainer(None, model_id=encoder.model_id, progress=progress, **training)
    result = trainer.fit_vectors(
        train, vectors(train), validation, vectors(validation), corpus, data_fingerprint=data.fingerprint
    )
    candidate = result.adapter
    live = store.live_adapter(encoder.model_id, dim)
    live_name = live_at_start or BASE
    live_since = store.pointer().get("since") or ""  # the comparison runs from the last change of live
    live_created = store.info(live_at_start).created or "" if live_at_start is not None else ""
    previous = store.candidate if store.candidate not in (None, live_at_start) else None
    previous = previous if previous in store.versions() else None
    previous_adapter = store.load(previous, encoder.model_id, dim) if previous is not None else None
    previous_created = store.info(previous).created or "" if previous is not None else ""

    # rolling origin: every query no adapter has scored yet, scored once by a candidate that never trained on
    # it (tonight's on the held-out queries, the one before it on what came since it was trained), and by live
    ledger_path = store.state_dir / EVIDENCE_FILE
    ledger = read_jsonl(ledger_path)
    done = {r["query_id"] for r in ledger if "query_id" in r}
    added = {q: info.get(q, {}).get("added") or "" for q in data.query_ids}
    held_ids = set(held.query_ids)
    groups: dict[str, list[str]] = {"tonight": [], "previous": [], "none": []}
    for q in data.query_ids:
        if q in done or added[q] <= live_created:
            continue  # scored already, or live may have trained on it
        if q in held_ids and not candidate.is_identity:
            groups["tonight"].append(q)
        elif previous is not None and added[q] > previous_created:
            groups["previous"].append(q)
        else:
            groups["none"].append(q)
    seen_now = {d for ts in (train, validation) for docs in ts.relevant.values() for d in docs}
    seen_before = {d for q in data.query_ids if added[q] <= previous_created for d in data.relevant[q]}
    scorers = {
        "tonight": (None if candidate.is_identity else candidate, seen_now),
        "previous": (previous_adapter, seen_before),
        "none": (None, set()),
    }
    scored_at = now_iso()
    rows: list[dict[str, Any]] = []
    for group, ids in groups.items():
        scorer, seen = scorers[group]
        for row in _score(data.subset(ids), vectors, corpus, config.metric, live, scorer, seen, info):
            names = {"tonight": "tonight", "previous": previous, "none": None}
            rows.append({**row, "scored_at": scored_at, "live": live_name, "candidate": names[group]})
    ledger += rows

    online = read_jsonl(store.state_dir / INTERLEAVING_FILE)
    window_start = (
        (now - timedelta(days=config.window_days)).isoformat(timespec="milliseconds") if config.window_days else None
    )
    has_new = not candidate.is_identity
    newest_name = "tonight" if has_new else previous
    evidence = pooled_evidence(config, ledger, online, live_name, live_since, window_start, newest_name)
    action, reason = decide(config, evidence, live_at_start)
    if action != "kept" and store.live != live_at_start:
        action, reason = "kept", f"live changed during this run (now {store.live or 'base model'}): an operator decided"

    night = [r for r in rows if r["query_id"] in held_ids]  # tonight's held-out slice, as the history shows it
    scores = _means(night)
    if night and "candidate" not in scores and candidate.is_identity:
        scores["candidate"] = scores["base"]  # training handed back the base model
    evaluation = {
        "metric": config.metric,
        "n_held_out": len(night),
        "n_train": len(train),
        "n_validation": len(validation),
        "n_scored": len(rows),
        "scores": scores,
        "groups": {g: _group([r for r in night if r.get("group") == g]) for g in ("seen", "new")},
        "evidence": _comparison(evidence, online, live_name, live_since),
        "confidence": config.confidence,
        "live_version": live_at_start,
        "previous_candidate": previous,
        "held_out_since": min((info.get(q, {}).get("timestamp") or "" for q in held.query_ids), default=None),
    }
    version = None
    if has_new:  # stored with the evidence that decided its fate
        version = store.add_version(
            candidate,
            {
                "evaluation": evaluation,
                "data": base_record["data"],
                "decision": {"action": action, "reason": reason},
                "config": asdict(config),
            },
        )
    for row in rows:
        row["candidate"] = version if row["candidate"] == "tonight" else row["candidate"]
        append_line(ledger_path, json.dumps(row) + "\n")
    newest = version or previous
    evaluation["candidate_version"] = newest
    details = {"reason": reason, **evaluation, **base_record, "comparison": evaluation["evidence"]}
    if action == "promoted":
        record = store.set_live(newest, "promoted", **details)
        store.set_candidate(None)
    elif action == "demoted":
        record = store.set_live(None, "demoted", candidate=newest, **details)
        store.set_candidate(newest)
    else:
        store.set_candidate(newest)
        record = store.append_history(
            {"action": "kept", "version": version, "live_before": store.live, "live_after": store.live, **details}
        )
    return RefreshOutcome(action, reason, store.live, newest, record)


def _group(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    means = _means(rows)
    return {"n_queries": len(rows), **{k: means.get(k) for k in ("base", "live", "candidate")}}


def _means(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    if not rows:
        return {}
    out = {"base": float(np.mean([r["base"] for r in rows])), "live": float(np.mean([r["live_score"] for r in rows]))}
    with_candidate = [r for r in rows if r.get("candidate_score") is not None]
    if with_candidate:
        out["candidate"] = float(np.mean([r["candidate_score"] for r in with_candidate]))
    return out


def _score(
    queries: TrainingSet,
    vectors: Callable[[TrainingSet], np.ndarray],
    corpus: Corpus,
    metric: str,
    live: Any,
    candidate: Any,
    seen_documents: set[str],
    info: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """One ledger row per query: base, live and (when given) candidate scores, group and weight."""
    if not queries.query_ids:
        return []
    x = vectors(queries)
    base = score_vectors(x, queries, corpus, (metric,)).per_query[metric]
    served = score_vectors(live.transform(x), queries, corpus, (metric,)).per_query[metric]
    other = score_vectors(candidate.transform(x), queries, corpus, (metric,)).per_query[metric] if candidate else None
    rows = []
    for i, q in enumerate(queries.query_ids):
        propensity = info.get(q, {}).get("propensity")
        row = {
            "query_id": q,
            "timestamp": info.get(q, {}).get("timestamp"),
            "base": round(float(base[i]), 6),
            "live_score": round(float(served[i]), 6),
            "candidate_score": round(float(other[i]), 6) if other is not None else None,
            "group": "seen" if any(d in seen_documents for d in queries.relevant[q]) else "new",
            "weight": round(1.0 / propensity, 4) if propensity else 1.0,
        }
        rows.append(row)
    return rows


def _plot(store: AdapterStore, metric: str) -> None:
    from adapter_retrievers.plots import plot_refresh_history

    decisions = [r for r in store.history() if r.get("action") in DECISIONS and r.get("scores")]
    if decisions:
        plot_refresh_history(decisions, store.root / PLOT_FILE, metric, overwrite=True)  # the store's own chart

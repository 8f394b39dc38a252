"""The nightly refresh on a synthetic task: promote what wins, keep live otherwise, record everything."""

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from typer.testing import CliRunner

from adapter_retrievers.capture import RetrievalLog
from adapter_retrievers.cli import app
from adapter_retrievers.refresh import RefreshConfig, refresh
from adapter_retrievers.sources import LogSource, SourceError
from adapter_retrievers.store import AdapterStore
from conftest import make_rotation_task

DAY0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
TRAINING = {"kind": "orthogonal", "solver": "procrustes"}
CONFIG = RefreshConfig(min_queries=20, training=TRAINING)


class LookupEncoder:
    """The rotation task's vectors by text: "query 7" is query vector 7, "document 7" document vector 7."""

    model_id = "test/rotation-32"

    def __init__(self, queries, docs):
        self.vectors = {f"query {i}": v for i, v in enumerate(queries)}
        self.vectors.update({f"document {i}": v for i, v in enumerate(docs)})

    def embed_queries(self, texts):
        return np.stack([self.vectors[t] for t in texts]).astype(np.float32)

    def embed_documents(self, texts):
        return self.embed_queries(texts)


def make_task():
    """A 300-document corpus and an encoder that looks up each query's vector: ``(corpus, encoder)``."""
    corpus, _, queries = make_rotation_task(n_docs=300)
    return corpus, LookupEncoder(queries, corpus.embeddings)


@pytest.fixture
def task():
    return make_task()


def log_day(log, day, indices, poisoned=False, seed=0):
    """One day of traffic: each query retrieves two documents and the user clicks the one it is about."""
    rng = np.random.default_rng(seed)
    for n, i in enumerate(indices):
        stamp = (DAY0 + timedelta(days=day, minutes=n)).isoformat()
        rid = log.log_retrieval(f"query {i}", [{"id": f"d{i}"}, {"id": f"d{(i + 1) % 300}"}], timestamp=stamp)
        log.add_click(rid, f"d{rng.integers(300)}" if poisoned else f"d{i}")


def run(tmp_path, task, day, config=CONFIG, echo=lambda _: None):
    corpus, encoder = task
    now = DAY0 + timedelta(days=day, hours=23)
    source = [LogSource(tmp_path / "rag-log.jsonl")]
    return refresh(tmp_path / "store", source, corpus, encoder, config, now=now, echo=echo)


def test_promote_then_nothing_new(tmp_path, task):
    log = RetrievalLog(tmp_path / "rag-log.jsonl")
    store = AdapterStore(tmp_path / "store")
    log_day(log, 0, range(0, 100))
    first = run(tmp_path, task, 0)
    assert first.action == "promoted" and store.live == first.candidate == "v0001"
    record = store.history()[-1]
    assert record["action"] == "promoted" and record["live_before"] is None
    assert record["scores"]["candidate"] > record["scores"]["base"] + 0.2  # the rotation was learned
    assert record["scores"]["live"] == record["scores"]["base"]  # nothing was live before
    assert record["groups"]["new"]["n_queries"] == 20 and record["groups"]["seen"]["n_queries"] == 0
    assert record["n_held_out"] == 20 and record["data"]["n_queries"] == 100
    assert record["sources"] == {"log:rag-log.jsonl": 200} and record["new_pairs"] == 100
    offline = record["comparison"]["offline"]
    assert offline["n"] == 20 and offline["significant"] and offline["e_value"] >= 20  # 1 / (1 - 0.95)
    version = store.info("v0001").record
    assert version["evaluation"]["scores"] == record["scores"] and version["decision"]["action"] == "promoted"
    assert version["data"]["fingerprint"] == record["data"]["fingerprint"]
    assert (store.root / "refresh.png").stat().st_size > 1000
    assert store.candidate is None  # promoted: nothing left to compare live with

    said: list[str] = []
    empty = run(tmp_path, task, 1, echo=said.append)  # an empty night
    assert empty.action == "nothing_new" and empty.candidate is None
    assert store.versions() == ["v0001"] and store.live == "v0001"
    assert store.history()[-1]["live_after"] == "v0001"  # the record says what was live, for status and history
    status = CliRunner().invoke(app, ["status", "--store", str(store.root)]).output
    assert "live=v0001" in status.split("last")[1].splitlines()[0], status
    assert "offline 20 queries scored by a candidate that never trained on them" in status, status
    assert "online  no interleaved traffic" in status and "candidate none" in status
    # yesterday's 100 retrievals are read again for late signals, but every one has its click already
    assert "0 retrievals without a signal wait for a late one" in said[0], said


def ledger(store):
    return [json.loads(line) for line in (store.state_dir / "evidence.jsonl").read_text().splitlines()]


def test_evidence_pools_across_nights_each_query_scored_once_by_a_candidate_that_never_trained_on_it(tmp_path, task):
    """One night's 20 held-out queries cannot reach a strict level; the next night's new queries, scored by the
    candidate trained before them, add to the same evidence and the newest candidate is promoted."""
    log = RetrievalLog(tmp_path / "rag-log.jsonl")
    store = AdapterStore(tmp_path / "store")
    strict = RefreshConfig(min_queries=20, training=TRAINING, confidence=0.9999)  # e-value 10,000 needed
    log_day(log, 0, range(0, 100))
    night1 = run(tmp_path, task, 0, strict)
    assert night1.action == "kept" and "not significant yet" in night1.reason
    assert store.candidate == "v0001" and store.live is None  # the candidate serving interleaves with live
    evidence = night1.record["comparison"]["offline"]
    assert evidence["n"] == 20 and 1 < evidence["e_value"] < 10_000
    log_day(log, 1, range(100, 200))
    night2 = run(tmp_path, task, 1, strict)
    assert night2.action == "promoted" and store.live == night2.candidate == "v0002"
    assert night2.record["comparison"]["offline"]["n"] == 120  # 20 + tonight's 100 new queries
    rows = ledger(store)
    assert len(rows) == len({r["query_id"] for r in rows}) == 200  # every query once
    by = {}
    for r in rows:
        by[r["candidate"]] = by.get(r["candidate"], 0) + 1
    # night 1: 20 held out for v0001, 80 trained on (scored by live and base only); night 2 holds out the newest
    # 40 of 200 for v0002, and v0001 (trained on night 1) scores the 60 other new queries v0002 trains on
    assert by == {"v0001": 20 + 60, None: 80, "v0002": 40}
    assert all(r["live"] == "base" for r in rows)


@pytest.mark.parametrize("demote", ["not_above", "significantly_below"])
def test_a_poisoned_night_is_never_promoted_and_live_is_judged_by_the_demote_rule(tmp_path, task, demote):
    """Without enough history to quarantine it (one night), a night of random clicks is decided on: it cannot
    promote; the demote rule judges live on its pooled recent evidence."""
    log = RetrievalLog(tmp_path / "rag-log.jsonl")
    store = AdapterStore(tmp_path / "store")
    config = RefreshConfig(min_queries=20, training=TRAINING, demote=demote)
    log_day(log, 0, range(0, 100))
    assert run(tmp_path, task, 0, config).action == "promoted"
    log_day(log, 2, range(100, 200), poisoned=True)  # clicks on random documents
    poisoned = run(tmp_path, task, 2, config)
    assert poisoned.action != "promoted"
    assert "nights of feedback history" in poisoned.record["quarantine_check"]["reason"]
    recent = poisoned.record["comparison"]["live_vs_base"]
    assert recent["n"] == 100 and recent["mean"] <= 0  # on noise live is not above the base model ...
    assert recent["interval"][1] >= 0  # ... but not significantly below it either
    if demote == "not_above":  # live must earn its place every night: the base model is served
        assert poisoned.action == "demoted" and store.live is None
        assert store.rollback()["live_after"] == "v0001"  # an operator undoes the demotion
    else:  # only a significant loss demotes: live stays through the noisy night
        assert poisoned.action == "kept" and store.live == "v0001"


def test_late_signals_find_their_retrieval_from_an_earlier_run(tmp_path, task):
    log = RetrievalLog(tmp_path / "rag-log.jsonl")
    for i in range(30):
        log.log_retrieval(f"query {i}", [{"id": f"d{i}"}], retrieval_id=f"r{i}", timestamp=DAY0.isoformat())
    first = run(tmp_path, task, 0)
    assert first.action == "kept" and "0 queries with pairs" in first.reason
    for i in range(30):
        log.add_click(f"r{i}", f"d{i}")  # the clicks arrive after the run read their retrievals
    second = run(tmp_path, task, 0)
    assert second.record["new_pairs"] == 30 and second.record["sources"] == {"log:rag-log.jsonl": 30}


def test_too_few_queries_keeps_live_without_training(tmp_path, task):
    log = RetrievalLog(tmp_path / "rag-log.jsonl")
    log_day(log, 0, range(10))
    outcome = run(tmp_path, task, 0)
    assert outcome.action == "kept" and "at least 20 are needed" in outcome.reason
    assert AdapterStore(tmp_path / "store").versions() == []
    assert run(tmp_path, task, 0).action == "nothing_new"


def test_a_source_error_moves_nothing(tmp_path, task):
    log = RetrievalLog(tmp_path / "rag-log.jsonl")
    log_day(log, 0, range(100))
    run(tmp_path, task, 0)
    store = AdapterStore(tmp_path / "store")
    marks = (store.state_dir / "watermarks.json").read_text()
    history = store.history()

    class Down:
        name = "server"

        def read(self, watermark, write, report):
            raise SourceError("trace server at http://127.0.0.1:9 is unreachable")

    log_day(log, 1, range(100, 200))
    corpus, encoder = task
    with pytest.raises(SourceError, match="unreachable"):
        refresh(store, [LogSource(log.path), Down()], corpus, encoder, CONFIG)
    assert (store.state_dir / "watermarks.json").read_text() == marks  # the log's watermark did not move
    assert store.live == "v0001" and store.lock().holder() is None
    failed = store.history()[-1]
    assert store.history()[:-1] == history and failed["action"] == "failed" and "unreachable" in failed["reason"]
    assert run(tmp_path, task, 1).record["new_pairs"] == 100  # the next run reads the day it missed


@pytest.mark.parametrize("demote", ["significantly_below", "not_above", "not_significantly_above"])
def test_live_that_fell_below_the_base_model_is_demoted_and_rollback_restores_it(tmp_path, task, demote):
    config = RefreshConfig(min_queries=20, training=TRAINING, demote=demote)
    corpus, encoder = task
    rng = np.random.default_rng(5)
    noise = rng.standard_normal(corpus.embeddings.shape).astype(np.float32) * 0.02
    for i, v in enumerate(corpus.embeddings + noise):  # users who ask the way the base model expects
        encoder.vectors[f"plain {i}"] = v
    log = RetrievalLog(tmp_path / "rag-log.jsonl")
    log_day(log, 0, range(0, 100))
    assert run(tmp_path, task, 0, config).action == "promoted"
    for n, i in enumerate(range(100, 250)):  # the population changed
        stamp = (DAY0 + timedelta(days=1, minutes=n)).isoformat()
        rid = log.log_retrieval(f"plain {i}", [{"id": f"d{i}"}], timestamp=stamp)
        log.add_click(rid, f"d{i}")
    outcome = run(tmp_path, task, 1, config)
    recent = outcome.record["comparison"]["live_vs_base"]
    assert recent["n"] == 150 and recent["mean"] < -0.2  # the rotation v0001 learned now hurts
    assert outcome.action == "demoted" and AdapterStore(tmp_path / "store").live is None
    assert outcome.record["live_before"] == "v0001" and recent["interval"][1] < 0
    assert "serving the base model" in outcome.reason
    assert outcome.record["quarantine_check"]["quarantine"] is False  # real users who changed: not quarantined
    result = CliRunner().invoke(app, ["rollback", "--store", str(tmp_path / "store")])
    assert result.exit_code == 0 and "live: v0001 (was base model)" in result.output, result.output


def test_history_lines_are_json(tmp_path, task):
    log = RetrievalLog(tmp_path / "rag-log.jsonl")
    log_day(log, 0, range(100))
    run(tmp_path, task, 0)
    lines = (tmp_path / "store" / "history.jsonl").read_text().splitlines()
    assert all(isinstance(json.loads(line), dict) for line in lines)


def _evidence(e_value, recent_mean, recent_interval, own=(0, 0.0), new=None, candidate=True):
    from adapter_retrievers.evidence import Sequential
    from adapter_retrievers.refresh import Evidence

    test = Sequential(100, 0.05, e_value, 20.0)
    return Evidence(
        offline=test,
        online=Sequential(0, 0.0, 1.0, 20.0),
        combined=test,
        gain=0.05,
        gain_interval=(-0.01, 0.1),
        new_documents=new or {"n": 0, "base": None, "candidate": None},
        live_vs_base={"n": 40, "mean": recent_mean, "interval": recent_interval},
        has_candidate=candidate,
        own={"n": own[0], "gain": own[1]},
    )


def _decide(config, *args, **kwargs):
    from adapter_retrievers.refresh import decide

    return decide(config, _evidence(*args, **kwargs), "v0001")[0]


@pytest.mark.parametrize(
    ("demote", "expected"),
    [("significantly_below", "kept"), ("not_above", "demoted"), ("not_significantly_above", "demoted")],
)
def test_live_slightly_below_base_is_demoted_only_by_the_rules_that_ask_it_to_earn_its_place(demote, expected):
    config = RefreshConfig(demote=demote)
    assert _decide(config, 2.0, -0.01, (-0.06, 0.04)) == expected  # below base, not significantly
    assert _decide(config, 2.0, -0.05, (-0.09, -0.01)) == "demoted"  # significantly below: every rule demotes


@pytest.mark.parametrize(
    ("demote", "expected"),
    [("significantly_below", "kept"), ("not_above", "kept"), ("not_significantly_above", "demoted")],
)
def test_live_above_base_but_not_significantly(demote, expected):
    assert _decide(RefreshConfig(demote=demote), 2.0, 0.02, (-0.02, 0.06)) == expected
    assert _decide(RefreshConfig(demote=demote), 2.0, 0.10, (0.04, 0.16)) == "kept"  # significantly above: kept


def test_promotion_needs_the_test_won_and_the_newest_candidate_and_new_documents_not_against_it():
    config = RefreshConfig()
    assert _decide(config, 25.0, 0.0, (-0.05, 0.05)) == "promoted"
    assert _decide(config, 19.9, 0.05, (0.01, 0.09)) == "kept"  # e-value short of 1 / (1 - 0.95)
    assert _decide(config, 25.0, 0.05, (0.01, 0.09), own=(12, -0.01)) == "kept"  # the newest one contradicts it
    below = {"n": 30, "base": 0.50, "candidate": 0.49}
    assert _decide(config, 25.0, 0.05, (0.01, 0.09), new=below) == "kept"
    assert _decide(RefreshConfig(new_documents_tolerance=0.02), 25.0, 0.05, (0.01, 0.09), new=below) == "promoted"
    assert _decide(config, 25.0, 0.05, (0.01, 0.09), candidate=False) == "kept"


def test_an_unknown_demote_rule_is_refused():
    with pytest.raises(ValueError, match="demote must be one of"):
        RefreshConfig(demote="sometimes")


def test_waiting_count_leaves_out_retrievals_that_have_a_signal(tmp_path):
    from adapter_retrievers.refresh import _keep_pending

    records = [
        {"type": "retrieval", "id": "a", "query": "q"},
        {"type": "retrieval", "id": "b", "query": "q"},
        {"type": "retrieval", "id": "c", "trace_id": "t", "query": "q"},
        {"type": "signal", "target": "a", "kind": "click"},
        {"type": "signal", "target": "t", "kind": "feedback"},  # answer feedback on c's trace
    ]
    run_file = tmp_path / "run.jsonl"
    run_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    waiting = _keep_pending(run_file, tmp_path / "pending.jsonl", 2.0, DAY0)
    assert waiting == 1  # only b; every record is still kept, so a late signal for a, b or c finds its retrieval
    assert len((tmp_path / "pending.jsonl").read_text().splitlines()) == 5


def log_shown_day(log, day, indices, wrong=False, seed=0):
    """A day where each retrieval shows five documents (the one the query is about mostly on top) and 80% of
    users click it; ``wrong``: every user clicks a shown document the query is not about."""
    rng = np.random.default_rng(seed + day)
    for n, i in enumerate(indices):
        others = [f"d{j}" for j in rng.choice([j for j in range(300) if j != i], 4, replace=False)]
        shown = list(others)
        shown.insert(int(rng.choice([0, 0, 0, 1, 2])), f"d{i}")
        stamp = (DAY0 + timedelta(days=day, minutes=n)).isoformat()
        rid = log.log_retrieval(f"query {i}", [{"id": d} for d in shown], timestamp=stamp)
        if wrong:
            log.add_click(rid, others[int(rng.integers(4))])
        elif rng.random() < 0.8:
            log.add_click(rid, f"d{i}")


def test_a_night_of_wrong_clicks_is_quarantined_until_an_operator_releases_it(tmp_path):
    corpus, _, queries = make_rotation_task(n_docs=300, mix=0.4)  # a base model that finds a fair share
    task = corpus, LookupEncoder(queries, corpus.embeddings)
    log = RetrievalLog(tmp_path / "rag-log.jsonl")
    store = AdapterStore(tmp_path / "store")
    for day in range(3):
        log_shown_day(log, day, range(70 * day, 70 * day + 70))
        run(tmp_path, task, day)
    live, candidate, versions = store.live, store.candidate, store.versions()
    assert live is not None  # the rotation was learned and promoted
    pairs_before = (store.state_dir / "pairs.jsonl").read_text()

    log_shown_day(log, 3, range(210, 280), wrong=True)
    poisoned = run(tmp_path, task, 3)
    check = poisoned.record["quarantine_check"]
    assert poisoned.action == "quarantined" and check["quarantine"], check
    assert all(check["features"][name]["far"] for name in ("position", "base_agreement"))
    # live was promoted the night before: its agreement has one night to compare with, too few to count
    assert "live_agreement" not in check["features"] and check["nights_of_history"]["live_agreement"] == 1
    assert (store.live, store.candidate, store.versions()) == (live, candidate, versions)  # nothing decided
    assert (store.state_dir / "pairs.jsonl").read_text() == pairs_before  # its pairs are kept apart
    night = poisoned.record["night"]
    assert night == "night-2026-11-04" and f"adapter-retrievers release {night}" in poisoned.reason
    status = CliRunner().invoke(app, ["status", "--store", str(store.root)]).output
    assert f"quarantined {night}: clicks far outside their history" in status, status

    # the next night reads the quarantined retrievals again (they wait for late signals): they stay apart
    log_shown_day(log, 4, range(280, 300))
    later = run(tmp_path, task, 4)
    assert later.action != "quarantined"
    stored = {json.loads(line)["query_id"] for line in (store.state_dir / "pairs.jsonl").read_text().splitlines()}
    from adapter_retrievers.harvest import query_id

    poisoned_queries = {query_id(f"query {i}") for i in range(210, 280)}
    assert not stored & poisoned_queries

    result = CliRunner().invoke(app, ["release", night, "--store", str(store.root)])
    assert result.exit_code == 0 and "released by an operator: 70 pairs" in result.output, result.output
    stored = {json.loads(line)["query_id"] for line in (store.state_dir / "pairs.jsonl").read_text().splitlines()}
    assert poisoned_queries <= stored and store.history()[-1]["action"] == "released"
    assert "quarantined" not in CliRunner().invoke(app, ["status", "--store", str(store.root)]).output
    result = CliRunner().invoke(app, ["release", night, "--store", str(store.root)])
    assert result.exit_code == 2 and result.output.startswith("error: no quarantined night")

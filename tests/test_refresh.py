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


def test_promote_then_nothing_new_then_refuse_a_poisoned_day(tmp_path, task):
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
    version = store.info("v0001").record
    assert version["evaluation"]["scores"] == record["scores"] and version["decision"]["action"] == "promoted"
    assert version["data"]["fingerprint"] == record["data"]["fingerprint"]
    assert (store.root / "refresh.png").stat().st_size > 1000

    said: list[str] = []
    empty = run(tmp_path, task, 1, echo=said.append)  # an empty night
    assert empty.action == "nothing_new" and empty.candidate is None
    assert store.versions() == ["v0001"] and store.live == "v0001"
    assert store.history()[-1]["live_after"] == "v0001"  # the record says what was live, for status and history
    status = CliRunner().invoke(app, ["status", "--store", str(store.root)]).output
    assert "live=v0001" in status.split("last")[1].splitlines()[0], status
    # yesterday's 100 retrievals are read again for late signals, but every one has its click already
    assert "0 retrievals without a signal wait for a late one" in said[0], said

    log_day(log, 2, range(100, 200), poisoned=True)  # clicks on random documents
    poisoned = run(tmp_path, task, 2)
    assert poisoned.record["scores"]["candidate"] < poisoned.record["scores"]["base"] + 0.05  # nothing to gain
    assert poisoned.action != "promoted" and store.live in ("v0001", None)  # the poisoned night is refused


@pytest.mark.parametrize("demote", ["not_above", "significantly_below"])
def test_a_poisoned_night_is_refused_and_live_is_judged_by_the_demote_rule(tmp_path, task, demote):
    log = RetrievalLog(tmp_path / "rag-log.jsonl")
    store = AdapterStore(tmp_path / "store")
    config = RefreshConfig(min_queries=20, training=TRAINING, demote=demote)
    log_day(log, 0, range(0, 100))
    assert run(tmp_path, task, 0, config).action == "promoted"
    log_day(log, 2, range(100, 200), poisoned=True)  # clicks on random documents
    poisoned = run(tmp_path, task, 2, config)
    assert poisoned.action != "promoted"
    # on noise, live is not above the base model, but not significantly below it either
    assert poisoned.record["scores"]["live"] <= poisoned.record["scores"]["base"]
    assert poisoned.record["live_gain_over_base"]["interval"][1] >= 0
    if demote == "not_above":  # live must earn its place every night: the base model is served
        assert poisoned.action == "demoted" and store.live is None
    else:  # only a significant loss demotes: live stays through the noisy night
        assert poisoned.action == "kept" and store.live == "v0001"
    assert [r["action"] for r in store.history()] == ["promoted", poisoned.action]

    log_day(log, 3, range(200, 300))
    window = RefreshConfig(min_queries=20, window_days=1.5, training=TRAINING, demote=demote)
    later = run(tmp_path, task, 3, window)
    assert later.record["data"]["n_queries"] == 100  # the window leaves the poisoned day out
    if demote == "not_above":  # a clean day: a new candidate wins over the base model again
        assert later.action == "promoted" and store.live == later.candidate
        assert later.record["scores"]["candidate"] > later.record["scores"]["base"] + 0.2
    else:
        assert later.record["scores"]["live"] > later.record["scores"]["base"] + 0.2  # v0001 still helps


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
def test_live_that_fell_below_the_base_model_is_demoted(tmp_path, task, demote):
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
    scores = outcome.record["scores"]
    assert scores["live"] < scores["base"] - 0.2  # the rotation v0001 learned now hurts
    assert outcome.action == "demoted" and AdapterStore(tmp_path / "store").live is None
    assert outcome.record["live_before"] == "v0001" and outcome.record["live_gain_over_base"]["interval"][1] < 0
    assert "serving the base model" in outcome.reason


def test_history_lines_are_json(tmp_path, task):
    log = RetrievalLog(tmp_path / "rag-log.jsonl")
    log_day(log, 0, range(100))
    run(tmp_path, task, 0)
    lines = (tmp_path / "store" / "history.jsonl").read_text().splitlines()
    assert all(isinstance(json.loads(line), dict) for line in lines)


NO_NEW = {"n_queries": 0, "base": None, "candidate": None}


def _decide(config, live_score, live_interval, candidate=0.0, gain_interval=(-0.1, 0.1), over_base=(-0.1, 0.1)):
    from adapter_retrievers.refresh import decide

    scores = {"base": 0.50, "live": live_score, "candidate": candidate}
    return decide(
        config,
        scores,
        NO_NEW,
        gain_over_live=gain_interval,
        candidate_over_base=over_base,
        live_over_base=live_interval,
        has_candidate=True,
        live="v0001",
    )[0]


@pytest.mark.parametrize(
    ("demote", "expected"),
    [("significantly_below", "kept"), ("not_above", "demoted"), ("not_significantly_above", "demoted")],
)
def test_live_slightly_below_base_is_demoted_only_by_the_rules_that_ask_it_to_earn_its_place(demote, expected):
    config = RefreshConfig(demote=demote)
    assert _decide(config, 0.49, (-0.06, 0.04)) == expected  # below base, not significantly
    assert _decide(config, 0.45, (-0.09, -0.01)) == "demoted"  # significantly below: every rule demotes


@pytest.mark.parametrize(
    ("demote", "expected"),
    [("significantly_below", "kept"), ("not_above", "kept"), ("not_significantly_above", "demoted")],
)
def test_live_above_base_but_not_significantly(demote, expected):
    assert _decide(RefreshConfig(demote=demote), 0.52, (-0.02, 0.06)) == expected
    assert _decide(RefreshConfig(demote=demote), 0.60, (0.04, 0.16)) == "kept"  # significantly above: kept


def test_a_winning_candidate_is_promoted_whatever_live_did_unless_it_must_beat_base_too():
    winner = {"candidate": 0.52, "gain_interval": (0.01, 0.08), "over_base": (-0.03, 0.07)}
    assert _decide(RefreshConfig(demote="not_above"), 0.47, (-0.08, 0.02), **winner) == "promoted"
    # above live, but not significantly above the base model: refused; live is then judged on its own
    old = RefreshConfig(demote="significantly_below", promote_over_base=True)
    assert _decide(old, 0.47, (-0.08, 0.02), **winner) == "kept"
    both = RefreshConfig(demote="not_above", promote_over_base=True)
    assert _decide(both, 0.47, (-0.08, 0.02), **winner) == "demoted"
    clear = {**winner, "over_base": (0.01, 0.05)}
    assert _decide(both, 0.47, (-0.08, 0.02), **clear) == "promoted"


def test_an_unknown_demote_rule_is_refused():
    with pytest.raises(ValueError, match="demote must be one of"):
        RefreshConfig(demote="sometimes")


def test_a_gain_wholly_below_zero_is_called_so():
    from adapter_retrievers.refresh import decide

    scores = {"base": 0.5, "live": 0.6, "candidate": 0.53}
    _, below = decide(
        RefreshConfig(demote="significantly_below"),
        scores,
        NO_NEW,
        gain_over_live=(-0.13, -0.02),
        candidate_over_base=(-0.1, 0.1),
        live_over_base=(0.05, 0.15),
        has_candidate=True,
        live="v0001",
    )
    assert "gain over live -0.0700 is significantly below zero (95% interval [-0.1300, -0.0200])" in below
    _, around = decide(
        RefreshConfig(demote="significantly_below"),
        scores,
        NO_NEW,
        gain_over_live=(-0.13, 0.02),
        candidate_over_base=(-0.1, 0.1),
        live_over_base=(0.05, 0.15),
        has_candidate=True,
        live="v0001",
    )
    assert "is not significantly above zero" in around


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

"""The pooled gate: an anytime-valid test, run every night on growing evidence, keeps its error level."""

import numpy as np
import pytest

from adapter_retrievers.evidence import betting_test, combine, wealth_path, weighted_bootstrap, weighted_mean
from adapter_retrievers.refresh import RefreshConfig, decide, pooled_evidence

NIGHTS = 30
RUNS = 1000
LEVEL = 0.05  # RefreshConfig().confidence = 0.95


def night_scores(rng, n, gain=0.0):
    """Per-query nDCG of live and of a candidate on ``n`` queries; the candidate is ``gain`` better on average
    (0: identical in distribution, the null hypothesis). Half the queries both rank alike."""
    difficulty = rng.random(n)
    live = np.clip(difficulty + rng.normal(0, 0.15, n), 0, 1)
    candidate = np.clip(difficulty + gain + rng.normal(0, 0.15, n), 0, 1)
    same = rng.random(n) < 0.5
    candidate[same] = np.clip(live[same] + gain, 0, 1)
    return live, candidate


def nightly(rng, gain=0.0):
    """30 nights of 20-60 scored queries: per-query differences and where each night ends."""
    sizes = rng.integers(20, 61, NIGHTS)
    diffs = [np.subtract(*night_scores(rng, n, gain)[::-1]) for n in sizes]
    return np.concatenate(diffs), np.cumsum(sizes) - 1


def test_identical_candidates_are_promoted_at_most_at_the_stated_level_over_30_nights():
    rng = np.random.default_rng(0)
    threshold = 1 / LEVEL
    ever, naive = 0, 0
    for _ in range(RUNS):
        x, ends = nightly(rng)
        ever += bool((wealth_path(x)[ends] >= threshold).any())  # the gate, looked at every night
        # the fixed-sample alternative on the same pooled evidence: a one-sided 95% test every night
        z = [x[: e + 1].mean() / (x[: e + 1].std(ddof=1) / np.sqrt(e + 1)) for e in ends]
        naive += bool((np.array(z) > 1.645).any())
    rate, naive_rate = ever / RUNS, naive / RUNS
    margin = 2 * np.sqrt(LEVEL * (1 - LEVEL) / RUNS)
    assert rate <= LEVEL + margin, f"false promotions in {rate:.1%} of {RUNS} runs of {NIGHTS} nights"
    assert naive_rate > 3 * LEVEL, naive_rate  # repeated fixed-sample tests would have promoted far more often


def test_a_better_candidate_is_promoted_within_a_few_nights():
    rng = np.random.default_rng(1)
    nights = []
    for _ in range(200):
        x, ends = nightly(rng, gain=0.05)
        crossed = np.flatnonzero(wealth_path(x)[ends] >= 1 / LEVEL)
        nights.append(crossed[0] + 1 if crossed.size else NIGHTS + 1)
    assert np.median(nights) <= 6 and np.mean(np.array(nights) <= NIGHTS) > 0.95


def ledger_rows(night, live, candidate, live_version="base", version="v0001", since="2026-01-01"):
    return [
        {
            "query_id": f"q{night}-{i}",
            "scored_at": f"{since}T{night:02d}:00",
            "timestamp": f"2026-11-{1 + night // 2:02d}",
            "live": live_version,
            "candidate": version,
            "group": "seen",
            "base": float(b),
            "live_score": float(b),
            "candidate_score": float(c),
            "weight": 1.0,
        }
        for i, (b, c) in enumerate(zip(live, candidate))
    ]


@pytest.mark.parametrize("gain", [0.0, 0.08])
def test_the_decision_rule_promotes_exactly_when_the_pooled_test_is_won(gain):
    """The refresh's own functions, night by night: ``pooled_evidence`` + ``decide`` promote on the night the
    e-value of every query scored so far first reaches 1 / (1 - confidence), never before."""
    config = RefreshConfig()
    rng = np.random.default_rng(2)
    for _ in range(3):
        ledger, promoted_on = [], None
        x, ends = nightly(np.random.default_rng(rng.integers(1 << 30)), gain)
        starts = np.concatenate([[0], ends[:-1] + 1])
        for night, (start, end) in enumerate(zip(starts, ends)):
            diff = x[start : end + 1]
            live = np.full(diff.shape, 0.5)
            ledger += ledger_rows(night, live, live + diff, version=f"v{night + 1:04d}")
            evidence = pooled_evidence(config, ledger, [], "base", "", None, f"v{night + 1:04d}")
            action, _ = decide(config, evidence, None)
            if action == "promoted":
                promoted_on = night
                break
        crossed = np.flatnonzero(wealth_path(x)[ends] >= 20)
        expected = crossed[0] if crossed.size else None
        if expected is not None and x[starts[expected] : ends[expected] + 1].mean() < 0:
            continue  # won on the pooled test, but that night's own candidate contradicts it: kept (see decide)
        assert promoted_on == expected


def test_rows_from_before_live_changed_and_of_another_live_do_not_count():
    config = RefreshConfig()
    win = ledger_rows(0, np.full(60, 0.3), np.full(60, 0.9))
    other_live = ledger_rows(1, np.full(60, 0.3), np.full(60, 0.9), live_version="v0007")
    assert pooled_evidence(config, win, [], "base", "", None, "v0001").offline.significant
    assert not pooled_evidence(config, other_live, [], "base", "", None, "v0001").offline.n
    later = pooled_evidence(config, win, [], "base", "2026-01-02", None, "v0001")  # live changed after them
    assert later.offline.n == 0 and not later.combined.significant


def test_interleaved_wins_count_and_combine_with_the_offline_evidence():
    config = RefreshConfig()
    online = [
        {"retrieval_id": f"r{i}", "read_at": "2026-01-02", "live": "base", "candidate": "v0001"}
        | {"live_clicks": int(i % 5 == 0), "candidate_clicks": int(i % 5 != 0)}
        for i in range(120)
    ]  # the candidate's picks get 4 clicks in 5
    evidence = pooled_evidence(config, [], online, "base", "", None, "v0001")
    assert evidence.online.n == 120 and evidence.online.significant and evidence.offline.n == 0
    assert evidence.combined.wealth == evidence.online.wealth  # no offline evidence: the online test alone
    against = betting_test([0.1, -0.2] * 20)  # offline evidence that leans against the candidate costs wealth
    both = combine(against, evidence.online)
    assert both.wealth == pytest.approx(against.wealth * evidence.online.wealth)
    assert both.wealth < evidence.online.wealth


def test_wealth_only_bets_on_the_candidate_and_refuses_values_out_of_bounds():
    assert wealth_path([-0.5] * 50)[-1] == 1.0  # evidence against the candidate never earns anything
    assert wealth_path([0.5] * 50)[-1] > 1e3
    with pytest.raises(ValueError, match="must lie in"):
        wealth_path([1.5])


def test_weighted_estimates():
    values, weights = np.array([0.0, 1.0]), np.array([1.0, 3.0])
    assert weighted_mean(values, weights) == 0.75 and weighted_mean(values, None) == 0.5
    lo, hi = weighted_bootstrap(values, weights)
    assert 0 <= lo <= 0.75 <= hi <= 1

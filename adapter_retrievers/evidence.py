"""Evidence that accumulates night after night, and a test that may be run on it every night.

The nightly refresh scores every new query once, with the base model, the live adapter and a candidate
that did not train on it (rolling-origin evaluation: each night's new traffic is scored by the candidate
trained before it). Pooled across nights, that is far more evidence than one night's held-out slice. But a
fixed-sample test (a 95% paired bootstrap) repeated every night on growing data promotes an adapter that is
no better with a probability that grows with every look: over 30 nights of identical candidates, far above
5% (``tests/test_evidence.py`` measures it).

:func:`betting_wealth` is a test that stays valid however often it is looked at: *testing by betting*
(Shafer 2021; Waudby-Smith & Ramdas, "Estimating means of bounded random variables by betting", JRSS-B
2023). A gambler starts with wealth 1 and, before each new observation ``x`` (a per-query gain of the
candidate over live, in [-1, 1]), stakes a fraction ``λ`` of it on ``x > 0``, chosen from the earlier
observations only (aGRAPA: an estimate of the growth-optimal fraction). Wealth becomes ``W·(1 + λx)``. While
no candidate is better than live on the traffic after it was trained (E[x | past] <= 0: the null
hypothesis), the wealth is a nonnegative supermartingale, so by Ville's inequality the probability that it
*ever* reaches ``1/α`` is at most ``α``: checked every night, every query, forever. Candidates may change
from night to night (each is fixed before the traffic that scores it); the test is about the loop's
candidates as a sequence. The offline evidence and the interleaving's are observations of different
queries under the same null hypothesis, so their wealths multiply into one test (:func:`combine`).

Pure numpy; the refresh keeps the observations in the store's state (``evidence.jsonl``,
``interleaving.jsonl``) and recomputes the wealth each night from the start of the comparison (the night
live last changed), which gives the same path as updating it online.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAX_BET = 0.5  # never stake more than half the wealth on the worst outcome


@dataclass(frozen=True)
class Sequential:
    """One comparison's running state: observations, mean, wealth (e-value) against ``threshold`` = 1/α."""

    n: int
    mean: float
    wealth: float
    threshold: float

    @property
    def significant(self) -> bool:
        return self.wealth >= self.threshold

    def as_dict(self) -> dict[str, float | int | bool]:
        return {
            "n": self.n,
            "mean": self.mean,
            "e_value": self.wealth,
            "threshold": self.threshold,
            "significant": self.significant,
        }


def wealth_path(x: Sequence[float] | np.ndarray, bound: float = 1.0, prior_variance: float = 0.05) -> np.ndarray:
    """The bettor's wealth after each observation, for the null hypothesis "mean <= 0".

    ``x``: observations in ``[-bound, bound]`` in the order they arrived. The fraction staked on the ``i``-th
    is aGRAPA's ``μ̂ / (σ̂² + μ̂²)`` from the ``i`` observations before it (with one prior observation at 0 and a
    prior variance ``prior_variance``, so the first bets are small), clipped to ``[0, MAX_BET]``: only ever a
    bet on "the candidate is better", so observations against it cost wealth and never earn any.
    """
    values = np.asarray(x, dtype=np.float64) / bound
    if values.size and (np.abs(values) > 1 + 1e-9).any():
        raise ValueError(f"observations must lie in [-{bound}, {bound}]")
    before = np.arange(values.size, dtype=np.float64)  # observations before each one
    sums = np.concatenate([[0.0], np.cumsum(values)[:-1]]) if values.size else values
    squares = np.concatenate([[0.0], np.cumsum(values * values)[:-1]]) if values.size else values
    mean = sums / (before + 1)
    deviations = squares - 2 * mean * sums + before * mean * mean  # Σ_{j<i} (x_j - mean_i)²
    variance = (prior_variance + deviations) / (before + 1)
    bets = np.clip(mean / (variance + mean * mean), 0.0, MAX_BET)
    return np.exp(np.cumsum(np.log1p(bets * values)))


def betting_test(x: Sequence[float] | np.ndarray, confidence: float = 0.95, bound: float = 1.0) -> Sequential:
    """The anytime-valid test of "mean > 0" on ``x`` so far: significant once the wealth reaches 1/(1-confidence)."""
    values = np.asarray(x, dtype=np.float64)
    path = wealth_path(values, bound)
    return Sequential(
        n=int(values.size),
        mean=float(values.mean()) if values.size else 0.0,
        wealth=float(path[-1]) if path.size else 1.0,
        threshold=1.0 / (1.0 - confidence),
    )


def combine(*tests: Sequential, confidence: float = 0.95) -> Sequential:
    """Two kinds of evidence on different queries as one test: the product of their wealths.

    Merged into one sequence, every observation (an offline score, an interleaved outcome) is a bet placed
    with only earlier observations known, and under the null hypothesis each has a conditional mean <= 0
    whatever came before, so the product of all the factors is still a nonnegative supermartingale: one
    bettor's wealth, valid at any time. Evidence against the candidate in either kind costs wealth.
    """
    used = [t for t in tests if t.n]
    threshold = 1.0 / (1.0 - confidence)
    if not used:
        return Sequential(0, 0.0, 1.0, threshold)
    n = sum(t.n for t in used)
    return Sequential(n, sum(t.mean * t.n for t in used) / n, float(np.prod([t.wealth for t in used])), threshold)


def weighted_mean(values: np.ndarray, weights: np.ndarray | None) -> float:
    """Self-normalised inverse-propensity estimate: ``Σ w x / Σ w`` (plain mean without weights)."""
    values = np.asarray(values, dtype=np.float64)
    if not values.size:
        return float("nan")
    if weights is None:
        return float(values.mean())
    weights = np.asarray(weights, dtype=np.float64)
    return float((weights * values).sum() / weights.sum())


def weighted_bootstrap(
    values: np.ndarray, weights: np.ndarray | None, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Bootstrap interval of :func:`weighted_mean` (queries resampled with their weights)."""
    values = np.asarray(values, dtype=np.float64)
    if not values.size:
        return (0.0, 0.0)
    weights = np.ones_like(values) if weights is None else np.asarray(weights, dtype=np.float64)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(values), size=(n_resamples, len(values)))
    w = weights[rows]
    means = (w * values[rows]).sum(axis=1) / w.sum(axis=1)
    alpha = (1.0 - confidence) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))

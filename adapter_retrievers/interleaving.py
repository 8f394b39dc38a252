"""Team-draft interleaving: compare two rankers online on the same queries, by the users' own clicks.

For a fraction of the traffic the serving wrappers show one list merged from two rankings, the live
adapter's and the candidate's (Radlinski, Kurup & Joachims, "How does clickthrough data reflect retrieval
quality?", CIKM 2008). The two rankers pick in turns, like captains choosing teams: in each round a coin
decides who picks first, and each picks its highest-ranked document not shown yet. Every shown document
belongs to the team that picked it, so a click credits one ranker; a ranker that puts what the users want
higher wins more of the queries with a click. Search engines settle "is B better than A" this way with one to
two orders of magnitude less traffic than an A/B test needs, because both rankers are judged on the same
query by the same user.

**Shared picks.** Where both rankers would pick the same document in a round decided by a coin (both rank it
next: the common top of two similar rankings), it is shown in the same place, below the same documents,
whichever way the coin falls: for a user who reads from the top, a click on it is a coin toss's credit, zero
on average and pure noise (the coin may still decide which ranker's document comes right below it). Its team
is :data:`SHARED` and a click on it credits neither ranker (so is the round's second pick when it too would be
the same document either way). Nothing else changes (the shown list, the propensities); identical rankers now
tie exactly instead of by a fair coin, and the outcomes left are the queries where the two rankings differ
where the user clicked (``benchmarks/interleaving.py`` measures what this saves).

:func:`team_draft` also returns, for each shown document, the probability that it would be shown at all
under this query's coin flips (exact: the flips are enumerated): a *propensity*. A click on a document that
only the candidate ranks high exists only where the coins let the candidate show it; weighting it by the
inverse of that probability is what makes evaluation on clicks unbiased towards either ranker
(:mod:`adapter_retrievers.evidence`).

Pure Python over document ids: no framework, no vectors. The wrappers call it with the two rankers' top
``k`` lists and a ``random.Random``; harvest credits each positive signal to the team of its document
(:func:`credit`).
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

LIVE, CANDIDATE = "live", "candidate"
RANKERS = (LIVE, CANDIDATE)
#: the team of a document shown at the same place whichever way its round's coin fell: no ranker's credit
SHARED = "shared"
METHOD = "team_draft"
#: document metadata keys the wrappers add to interleaved results (the capture log and spans carry them)
RANKER_KEY = "adapter_ranker"
PROPENSITY_KEY = "adapter_propensity"
#: run metadata / instrumentation tag naming the candidate an interleaved retrieval was compared with
CANDIDATE_VERSION = "adapter_candidate_version"


@dataclass(frozen=True)
class Interleaved:
    """One interleaved list: the shown document keys in order, the team of each, and each one's propensity
    (the probability, over this query's coin flips, that it is shown at all)."""

    keys: list[Hashable]
    teams: list[str]
    propensities: list[float]
    first: list[int]  # index of each shown key in (live ranking, candidate ranking) that it came from


def _draft(a: Sequence[Hashable], b: Sequence[Hashable], k: int, coins: Iterable[bool]) -> tuple[list, list, list]:
    """One team draft under the given coin flips (True: live picks first in that round)."""
    shown: list[Hashable] = []
    teams: list[str] = []
    origin: list[int] = []
    seen: set[Hashable] = set()
    ia = ib = 0
    n_a = n_b = 0
    flips = iter(coins)
    round_shared = False  # this round's coin picked a document both rankers would have picked
    while len(shown) < k:
        while ia < len(a) and a[ia] in seen:
            ia += 1
        while ib < len(b) and b[ib] in seen:
            ib += 1
        if ia >= len(a) and ib >= len(b):
            break
        shared = False
        if ia >= len(a):
            live_picks = False
        elif ib >= len(b):
            live_picks = True
        elif n_a != n_b:  # the round's second pick: the same document whichever team picked first?
            live_picks = n_a < n_b
            shared = round_shared and a[ia] == b[ib]
        else:
            live_picks = next(flips)
            shared = round_shared = a[ia] == b[ib]
        if live_picks:
            shown.append(a[ia])
            origin.append(ia)
            n_a += 1
        else:
            shown.append(b[ib])
            origin.append(ib)
            n_b += 1
        teams.append(SHARED if shared else LIVE if live_picks else CANDIDATE)
        seen.add(shown[-1])
    return shown, teams, origin


def shown_probabilities(live: Sequence[Hashable], candidate: Sequence[Hashable], k: int) -> dict[Hashable, float]:
    """For every document either ranking could show: the probability that a team draft of ``k`` shows it.

    Exact: the draft is followed down every coin sequence (one coin per round in which both teams have
    picked equally often: at most ``ceil(k / 2)`` coins, 32 paths for ``k = 10``), sharing the picks that
    come before each coin.
    """
    totals: dict[Hashable, float] = {}

    def follow(shown: list, seen: set, ia: int, ib: int, n_a: int, n_b: int, weight: float, live_first: bool | None):
        while len(shown) < k:
            while ia < len(live) and live[ia] in seen:
                ia += 1
            while ib < len(candidate) and candidate[ib] in seen:
                ib += 1
            if ia >= len(live) and ib >= len(candidate):
                break
            if ia >= len(live):
                live_picks = False
            elif ib >= len(candidate):
                live_picks = True
            elif n_a != n_b:
                live_picks = n_a < n_b
            elif live_first is None:  # a coin: both outcomes, half the weight each
                follow(list(shown), set(seen), ia, ib, n_a, n_b, weight / 2, True)
                follow(shown, seen, ia, ib, n_a, n_b, weight / 2, False)
                return
            else:
                live_picks, live_first = live_first, None
            key = live[ia] if live_picks else candidate[ib]
            shown.append(key)
            seen.add(key)
            n_a, n_b = (n_a + 1, n_b) if live_picks else (n_a, n_b + 1)
        for key in shown:
            totals[key] = totals.get(key, 0.0) + weight

    follow([], set(), 0, 0, 0, 0, 1.0, None)
    return totals


def team_draft(
    live: Sequence[Hashable], candidate: Sequence[Hashable], k: int, rng: random.Random | None = None
) -> Interleaved:
    """Team-draft interleaving of two rankings (best first) into ``k`` shown documents.

    Duplicates within a ranking are shown once; when one ranking runs out the other fills the list.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    rng = rng or random.Random()
    coins = (rng.random() < 0.5 for _ in iter(int, 1))
    shown, teams, origin = _draft(live, candidate, k, coins)
    probabilities = shown_probabilities(live, candidate, k)
    return Interleaved(shown, teams, [probabilities[key] for key in shown], origin)


def credit(teams: Iterable[str | None]) -> dict[str, int]:
    """Positive signals per ranker, from the team of each document a click, citation or label named (a
    :data:`SHARED` pick's signal credits neither)."""
    counts = {LIVE: 0, CANDIDATE: 0}
    for team in teams:
        if team in counts:
            counts[team] += 1
    return counts


def outcome(counts: dict[str, int]) -> int:
    """One interleaved query's result: +1 the candidate won (more credited signals), -1 live won, 0 a tie."""
    difference = counts.get(CANDIDATE, 0) - counts.get(LIVE, 0)
    return (difference > 0) - (difference < 0)

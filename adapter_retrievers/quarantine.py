"""A night whose feedback disagrees with everything the store has seen is kept apart.

A poisoned or broken night (a bot clicking, a front-end bug that reports the wrong position, an
annotation job gone wrong) looks like a population change to the decision rule: the clicks no longer
agree with the rankings, so a good live adapter seems no better than the base model and is demoted
(measured from outside: 300 questions whose every click landed on a wrong shown paragraph demoted a good
adapter). Real users who change ask differently, but they still click what answers them.

:func:`profile` describes one night's feedback by what a poisoned night changes:

- ``click_rate``: the share of the night's new retrievals with a click, citation or positive label;
- ``position``: the shown position of each document they named (0: the top);
- ``live_agreement`` and ``base_agreement``: the reciprocal rank of each named document in the live
  adapter's and in the base model's ranking of the whole corpus (exact search); live's is compared only
  with the nights the same adapter was live (a promotion changes it on purpose).

:func:`check` compares each feature with the nights before it (their pooled per-query values and the
spread of their nightly means): a feature is *far outside its history* when its z-score passes
``z``. The night is quarantined when every agreement feature (position, live and base agreement) is far
outside in the direction of disagreement: the clicks land far lower in the shown list *and* far lower in
both rankings than on any night before. The click rate is measured and reported beside them but decides
nothing: a new population (a language the base model serves badly) changes it as much as a bot does.
A population that changes moves some agreements (live's falls when the adapter no longer fits, while the
base model's holds); a night of wrong clicks moves all of them. Quarantined pairs are kept in
``state/quarantine/<night>.json`` until an operator releases them (``adapter-retrievers release``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adapter_retrievers._files import atomic_write_text

#: features whose values say how well the clicks agree with the rankings, and which way is "less"
AGREEMENT = {"position": +1, "live_agreement": -1, "base_agreement": -1}
FEATURES = ("click_rate", *AGREEMENT)


@dataclass
class QuarantineConfig:
    """``z``: how many standard errors from its history a feature must be; ``min_nights``: nights of history
    needed before any night can be quarantined; ``enabled``: False turns the check off."""

    enabled: bool = True
    z: float = 4.0
    min_nights: int = 2


def summary(values: Sequence[float]) -> dict[str, float] | None:
    """``{"mean", "sd", "n"}`` of per-query values (None without any)."""
    x = np.asarray(values, dtype=np.float64)
    if not x.size:
        return None
    return {"mean": float(x.mean()), "sd": float(x.std(ddof=1)) if x.size > 1 else 0.0, "n": int(x.size)}


def profile(
    feedback: Sequence[Any],
    n_retrievals: int,
    live_ranks: dict[str, list[int]] | None = None,
    base_ranks: dict[str, list[int]] | None = None,
    live: str | None = None,
) -> dict[str, Any]:
    """One night's feedback profile (see the module docstring).

    ``feedback``: :class:`~adapter_retrievers.harvest.RetrievalFeedback` of the night's new retrievals that
    have a signal; ``n_retrievals``: how many new retrievals the night read (with a signal or not);
    ``live_ranks``/``base_ranks``: per retrieval id, the 0-based rank of each named document in that ranking;
    ``live``: the version live was (agreement with it compares only with nights it was live too).
    """
    named = [f for f in feedback if f.documents]
    clicked = [1.0] * len(named) + [0.0] * max(n_retrievals - len(named), 0)
    positions = [float(p) for f in named for p in f.positions if p is not None]
    out: dict[str, Any] = {"live": live, "click_rate": summary(clicked), "position": summary(positions)}
    for name, ranks in (("live_agreement", live_ranks), ("base_agreement", base_ranks)):
        values = [1.0 / (r + 1) for f in named for r in (ranks or {}).get(f.retrieval_id, [])]
        out[name] = summary(values) if ranks is not None else None
    return out


def _history(nights: Sequence[dict[str, Any]], feature: str) -> tuple[float, float, float, int] | None:
    """Pooled mean and sd of the per-query values of ``feature`` over past nights, the variance of the nightly
    means beyond their sampling error, and the number of nights."""
    parts = [n[feature] for n in nights if n.get(feature)]
    if not parts:
        return None
    total = sum(p["n"] for p in parts)
    mean = sum(p["mean"] * p["n"] for p in parts) / total
    within = sum((p["n"] - 1) * p["sd"] ** 2 + p["n"] * (p["mean"] - mean) ** 2 for p in parts) / max(total - 1, 1)
    means = np.array([p["mean"] for p in parts])
    sampling = np.mean([p["sd"] ** 2 / p["n"] for p in parts])
    between = max(float(means.var(ddof=1)) - float(sampling), 0.0) if len(parts) > 1 else 0.0
    return mean, float(np.sqrt(within)), between, len(parts)


def check(
    tonight: dict[str, dict[str, float] | None], history: Sequence[dict[str, Any]], config: QuarantineConfig
) -> dict[str, Any]:
    """Compare tonight's profile with the accepted nights before it.

    Returns ``{"quarantine": bool, "reason": str, "features": {name: {"tonight", "history", "history_sd",
    "z", "far"}}}``; ``far`` is True when the feature is beyond ``config.z`` in the direction that counts.
    """
    features: dict[str, Any] = {}
    same_live = [n for n in history if n.get("live") == tonight.get("live")]
    nights = {}
    for name in FEATURES:
        # agreement with live's ranking is comparable only between nights the same adapter was live
        past_nights = same_live if name == "live_agreement" else history
        now, past = tonight.get(name), _history(past_nights, name)
        nights[name] = past[3] if past is not None else 0
        if not now or past is None or past[3] < config.min_nights:
            continue
        mean, sd, between, _ = past
        total = sum(n[name]["n"] for n in past_nights if n.get(name))
        se = float(np.sqrt(sd**2 / now["n"] + sd**2 / total + between))
        z = (now["mean"] - mean) / se if se > 0 else (0.0 if now["mean"] == mean else float("inf"))
        direction = AGREEMENT.get(name)
        far = abs(z) >= config.z if direction is None else direction * z >= config.z
        features[name] = {"tonight": now["mean"], "history": mean, "history_sd": sd, "z": z, "far": far}
    # position and the base model's agreement always count; live's once it has served long enough to compare
    needed = [f for f in AGREEMENT if f in features]
    complete = {"position", "base_agreement"} <= set(needed)
    far = complete and all(features[f]["far"] for f in needed)
    quarantine = config.enabled and far
    history_nights = min(nights["position"], nights["base_agreement"])
    if quarantine:
        reason = "clicks far outside their history: " + ", ".join(
            f"{name} {f['tonight']:.3f} vs {f['history']:.3f} (z {f['z']:+.1f})" for name, f in features.items()
        )
    elif not config.enabled:
        reason = "quarantine check off"
    elif history_nights < config.min_nights:
        reason = (
            f"{history_nights} nights of feedback history; {config.min_nights} needed before a night can be quarantined"
        )
    elif not complete:
        reason = "no ranking agreement measured tonight (no training night)"
    else:
        reason = "within history on " + ", ".join(name for name in needed if not features[name]["far"])
    return {"quarantine": bool(quarantine), "reason": reason, "features": features, "nights_of_history": nights}


class Quarantined:
    """The nights kept apart: one JSON file each (``state/quarantine/<night>.json``) with the night's pairs and
    the ids of its retrievals, until :func:`adapter_retrievers.refresh.release` puts them back."""

    def __init__(self, state_dir: os.PathLike | str) -> None:
        self.folder = Path(state_dir) / "quarantine"

    def nights(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.json")) if self.folder.is_dir() else []

    def _load(self, night: str) -> dict[str, Any]:
        return json.loads((self.folder / f"{night}.json").read_text(encoding="utf-8"))

    def rows(self, night: str) -> list[dict[str, Any]]:
        return list(self._load(night).get("pairs", []))

    def keys(self) -> set[tuple[str, str]]:
        """(query id, document id) of every pair kept apart: later nights must not add them (they are read
        again while their retrievals wait for late signals)."""
        return {(r["query_id"], r["doc_id"]) for night in self.nights() for r in self.rows(night)}

    def retrievals(self) -> set[str]:
        return {rid for night in self.nights() for rid in self._load(night).get("retrievals", [])}

    def add(self, rows: list[dict[str, Any]], retrievals: list[str], day: str, taken: set[str]) -> str:
        """Keep a night apart under a new name (``night-<day>``, numbered when taken); returns the name."""
        name, n = f"night-{day}", 1
        while name in taken or name in self.nights():
            n += 1
            name = f"night-{day}-{n}"
        self.folder.mkdir(parents=True, exist_ok=True)
        content = {"night": name, "pairs": rows, "retrievals": retrievals}
        atomic_write_text(self.folder / f"{name}.json", json.dumps(content, ensure_ascii=False) + "\n")
        return name

    def remove(self, night: str) -> None:
        (self.folder / f"{night}.json").unlink()

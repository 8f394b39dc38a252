"""The gate: is the selected adapter better than no adapter, by what validation can see?"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from adapter_retrievers.evaluation import paired_bootstrap
from adapter_retrievers.training.config import TrainingConfig
from adapter_retrievers.training.selection import Choice

logger = logging.getLogger(__name__)


def decide(
    base: np.ndarray, adapted: np.ndarray, new: np.ndarray, chosen: Choice, cfg: TrainingConfig, split: str
) -> dict[str, Any]:
    """Keep the chosen candidate only if validation shows it helps: the decision and every number behind it.

    ``base``/``adapted``: per-query validation scores of the base model and the candidate; ``new``: which
    queries are about documents no training query had. With validation about documents with traffic the gain
    must be significant (paired bootstrap at ``cfg.significance``); with validation about new documents only
    (k-fold, a split by document), which cannot see that gain, the candidate must not be worse than the base
    model by more than ``cfg.non_inferiority_margin``.
    """
    interval = paired_bootstrap(base, adapted, confidence=cfg.significance, seed=cfg.seed)
    kept = bool(chosen.epoch)
    reason = "" if kept else "no candidate beat the base model on validation"
    # validation about new documents only cannot see the gain on documents with traffic: test "not worse"
    blind = bool(new.all()) and cfg.non_inferiority_margin is not None
    test = f"not worse than the base model by more than {cfg.non_inferiority_margin}" if blind else "significant gain"
    if kept and cfg.require_significant_gain:
        if blind and interval[0] <= -cfg.non_inferiority_margin:
            kept, reason = False, f"may be worse than the base model by more than {cfg.non_inferiority_margin}"
        elif not blind and interval[0] <= 0:
            kept, reason = False, "gain not significant"
        if not kept:
            logger.info(
                "best epoch %d gains %s on validation: %s, keeping the base model", chosen.epoch, interval, reason
            )
    decision: dict[str, Any] = {
        "kept": kept,
        "split": split,
        "metric": cfg.selection_metric,
        "n_queries": len(base),
        "baseline": float(base.mean()),
        "adapted": float(adapted.mean()),
        "gain": float(adapted.mean() - base.mean()),
        "gain_interval": list(interval),
        "significance": cfg.significance,
        "test": test,
        "epoch": chosen.epoch,
        "blend": chosen.alpha,
        "n_new": int(new.sum()),
        "new_gain": float(adapted[new].mean() - base[new].mean()) if new.any() else None,
        "n_seen": int((~new).sum()),
        "seen_gain": float(adapted[~new].mean() - base[~new].mean()) if (~new).any() else None,
        "reason": reason,
    }
    return decision

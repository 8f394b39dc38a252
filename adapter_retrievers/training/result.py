"""What :meth:`~adapter_retrievers.training.AdapterTrainer.fit` returns."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from adapter_retrievers.adapters import QueryAdapter
from adapter_retrievers.evaluation import Comparison
from adapter_retrievers.training.config import TrainingConfig


@dataclass
class TrainingResult:
    """What :meth:`AdapterTrainer.fit` returns: the chosen adapter and how it was chosen."""

    adapter: QueryAdapter
    report: Comparison
    history: list[dict[str, float]]
    best_epoch: int
    train_seconds: float
    n_train_queries: int
    n_validation_queries: int
    config: TrainingConfig = field(repr=False, default_factory=TrainingConfig)
    training_documents: set[str] = field(repr=False, default_factory=set)
    decision: dict[str, Any] = field(default_factory=dict)

    @property
    def improved(self) -> bool:
        """False when no epoch beat the base model on validation (the adapter is then the identity)."""
        return not self.adapter.is_identity

    @property
    def stability(self) -> dict[str, Any]:
        """How much the result depends on which queries trained it, without running it again: the chosen
        candidate's validation gain on each fold (each fold's queries were held out from that fold's run),
        their spread, and each ``negatives`` option's best validation score."""
        gains = self.decision.get("fold_gains") or []
        return {
            "fold_gains": list(gains),
            "fold_gain_spread": (max(gains) - min(gains)) if gains else None,
            "option_scores": dict(self.decision.get("option_scores") or {}),
        }

    def describe_decision(self) -> str:
        """One line: which validation decided, by how much, and whether the adapter was kept."""
        d = self.decision
        if not d:
            return ""
        lo, hi = d["gain_interval"]
        line = (
            f"{'kept' if d['kept'] else 'kept the base model'}: {d['split']} ({d['n_queries']} queries) "
            f"{d['metric']} gain {d['gain']:+.4f} [{lo:+.4f}, {hi:+.4f}] at {d['significance']:.0%}"
        )
        if d.get("n_new"):
            line += f"; on {d['n_new']} queries about new documents {d['new_gain']:+.4f}"
        if d.get("test", "significant gain") != "significant gain":  # validation saw no document with traffic
            line += f"; tested: {d['test']}"
        if d.get("reason"):
            line += f" ({d['reason']})"
        if d.get("fold_gains") and d["kept"]:
            gains = d["fold_gains"]
            line += (
                f"; per fold {', '.join(f'{g:+.3f}' for g in gains)} (spread {max(gains) - min(gains):.3f}: "
                "how much the gain depends on which queries trained)"
            )
        if d.get("outpaced_at_epoch"):
            scores = d.get("option_scores") or {}
            top = max(scores.values(), default=float("nan"))
            line += "; " + ", ".join(
                f"negatives={option} stopped at epoch {epoch}, {top - scores.get(option, float('nan')):.3f} behind"
                for option, epoch in d["outpaced_at_epoch"].items()
            )
        if d.get("working_set"):
            w = d["working_set"]
            line += (
                f"; on a working set of {w['documents']:,} of {w['of_corpus']:,} documents (each query's base "
                f"top {w['base_top_k']}, the positives and {w['random']:,} random others)"
            )
        if d.get("refit_on_queries"):
            line += f"; then trained again on all {d['refit_on_queries']} queries"
        if d.get("averaged_runs"):
            line += f", averaged with the {d['averaged_runs'].replace(' and the refit', '')}"
        return line

    def plot_history(self, path: os.PathLike | str, overwrite: bool = False) -> None:
        """PNG of training loss and validation metric per epoch (an existing file only with ``overwrite=True``)."""
        from adapter_retrievers.plots import plot_history

        plot_history(self.history, self.config.selection_metric, path, overwrite=overwrite)

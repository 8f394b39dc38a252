"""PNG charts (matplotlib, imported lazily): before/after metrics, learning curves, training history."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

from adapter_retrievers._files import atomic_write_bytes


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: os.PathLike | str) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def plot_comparison(comparison: Any, path: os.PathLike | str) -> None:
    """Bar chart of each metric for the base model and the adapted one, with the gain's interval."""
    plt = _pyplot()
    base, adapted = comparison.baseline.mean(), comparison.adapted.mean()
    names = list(base)
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 4))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [base[m] for m in names], width=0.4, label="base model")
    errors = [
        [adapted[m] - (base[m] + comparison.intervals[m][0]) for m in names],
        [(base[m] + comparison.intervals[m][1]) - adapted[m] for m in names],
    ]
    ax.bar(
        [i + 0.2 for i in x],
        [adapted[m] for m in names],
        width=0.4,
        yerr=errors,
        capsize=3,
        label=f"with {comparison.adapter_kind} adapter",
    )
    for i, m in enumerate(names):
        top = max(adapted[m], base[m] + comparison.intervals[m][1])
        ax.text(i + 0.2, top + 0.015, f"{adapted[m] - base[m]:+.3f}", ha="center", fontsize=8)
    ax.set_xticks(list(x), names)
    ax.set_ylim(0, 1.05)
    c = comparison
    ax.set_title(f"{c.dataset}\n{c.n_queries} held-out queries, {c.n_documents} docs, {c.model}", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def plot_learning_curve(
    rows: Sequence[dict[str, float]], path: os.PathLike | str, metric: str = "ndcg@10", title: str = ""
) -> None:
    """Held-out metric against number of training pairs, with the base model as a line.

    Rows from :func:`~adapter_retrievers.learning_curve` also carry the gain on held-out queries about
    documents seen in training and about new ones: drawn in a second panel.
    """
    plt = _pyplot()
    grouped = any(r.get("new_gain") is not None for r in rows)
    fig, axes = plt.subplots(1, 2 if grouped else 1, figsize=(11 if grouped else 6, 4), squeeze=False)
    ax = axes[0][0]
    pairs = [r["pairs"] for r in rows]
    values = [r[metric] for r in rows]
    ax.errorbar(pairs, values, yerr=[r.get("std", 0.0) for r in rows], marker="o", capsize=3, label="adapted")
    if rows:
        ax.axhline(rows[0]["baseline"], color="gray", linestyle="--", label="base model")
    ax.set_xscale("log")
    ax.set_xlabel("training pairs")
    ax.set_ylabel(f"held-out {metric}")
    ax.set_title(title, fontsize=9)
    ax.legend()
    if grouped:
        gain_ax = axes[0][1]
        for key, label in (("gain", "all"), ("seen_gain", "seen documents"), ("new_gain", "new documents")):
            gain_ax.plot(pairs, [r.get(key, float("nan")) for r in rows], marker="o", label=label)
        gain_ax.axhline(0.0, color="gray", linestyle="--")
        gain_ax.set_xscale("log")
        gain_ax.set_xlabel("training pairs")
        gain_ax.set_ylabel(f"gain in {metric} over the base model")
        gain_ax.set_title("held-out queries about documents seen in training vs new", fontsize=9)
        gain_ax.legend()
    _save(fig, path)


def plot_history(history: Sequence[dict[str, float]], metric: str, path: os.PathLike | str) -> None:
    """Training loss and validation metric per epoch."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h[metric] for h in history], marker=".", color="tab:blue")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {metric}", color="tab:blue")
    loss_ax = ax.twinx()
    loss_ax.plot(epochs[1:], [h["train_loss"] for h in history[1:]], color="tab:orange")
    loss_ax.set_ylabel("training loss", color="tab:orange")
    _save(fig, path)

"""PNG charts (matplotlib, imported lazily): before/after metrics, learning curves, training history."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

from adapter_retrievers._files import atomic_write_bytes
from adapter_retrievers.outputs import check_output


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


def plot_comparison(comparison: Any, path: os.PathLike | str, overwrite: bool = False) -> None:
    """Bar chart of each metric for the base model and the adapted one, with the gain's interval.

    With seen/new groups (``compare(..., seen_documents=...)``) a second panel gives the gain on all
    held-out queries, on those about documents seen in training and on those about new documents.
    An existing file is replaced only with ``overwrite=True``.
    """
    check_output(path, overwrite)
    _save(comparison_figure(comparison), path)


def comparison_figure(comparison: Any) -> Any:
    """The figure :func:`plot_comparison` saves: labelled axes, the interval named, seen/new when grouped."""
    plt = _pyplot()
    c = comparison
    base, adapted = c.baseline.mean(), c.adapted.mean()
    names = list(base)
    pct = f"{c.confidence:.0%}"
    panels = 2 if c.has_groups else 1
    widths = [1.6 * len(names) + 2, 1.2 * len(names) + 1][:panels]
    fig, axes = plt.subplots(1, panels, figsize=(sum(widths), 4.2), gridspec_kw={"width_ratios": widths})
    ax = axes[0] if panels > 1 else axes
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [base[m] for m in names], width=0.4, label="base model")
    errors = [
        [adapted[m] - (base[m] + c.intervals[m][0]) for m in names],
        [(base[m] + c.intervals[m][1]) - adapted[m] for m in names],
    ]
    ax.bar(
        [i + 0.2 for i in x],
        [adapted[m] for m in names],
        width=0.4,
        yerr=errors,
        capsize=3,
        label=f"with {c.adapter_kind} adapter",
    )
    for i, m in enumerate(names):
        top = max(adapted[m], base[m] + c.intervals[m][1])
        ax.text(i + 0.2, top + 0.015, f"{adapted[m] - base[m]:+.3f}", ha="center", fontsize=8)
    ax.set_xticks(list(x), names)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"mean over {c.n_queries} held-out queries")
    ax.set_title(f"{c.dataset}\n{c.n_queries} held-out queries, {c.n_documents} docs, {c.model}", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    ax.annotate(
        f"error bars: {pct} paired-bootstrap interval of the gain over the base model; numbers: the gain",
        (0, 0),
        xycoords="axes fraction",
        xytext=(0, -28),
        textcoords="offset points",
        fontsize=7,
        color="dimgray",
    )
    if c.has_groups:
        _plot_group_gains(axes[1], c, names, pct)
    return fig


def _plot_group_gains(ax: Any, c: Any, names: list[str], pct: str) -> None:
    """Gain per metric on all held-out queries, on those about seen documents and on those about new ones."""
    from adapter_retrievers.evaluation import GROUP_LABELS

    groups = [g for g in (None, "seen", "new") if c.n_queries_in(g)]
    width = 0.8 / max(1, len(groups))
    for k, group in enumerate(groups):
        gains = [c.gain(m, group) for m in names]
        bounds = [c.interval(m, group) for m in names]
        offset = (k - (len(groups) - 1) / 2) * width
        ax.bar(
            [i + offset for i in range(len(names))],
            gains,
            width=width,
            yerr=[[g - lo for g, (lo, _) in zip(gains, bounds)], [hi - g for g, (_, hi) in zip(gains, bounds)]],
            capsize=2,
            label=f"{GROUP_LABELS[group]} ({c.n_queries_in(group)} queries)",
        )
    ax.axhline(0.0, color="gray", linewidth=0.8)
    ax.set_xticks(list(range(len(names))), names)
    ax.set_ylabel("gain over the base model")
    ax.set_title(f"held-out queries about documents seen in training vs new\n(error bars: {pct} interval)", fontsize=9)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=len(groups), frameon=False)


def plot_learning_curve(
    rows: Sequence[dict[str, float]],
    path: os.PathLike | str,
    metric: str = "ndcg@10",
    title: str = "",
    overwrite: bool = False,
) -> None:
    """Held-out metric against number of training pairs, with the base model as a line.

    Rows from :func:`~adapter_retrievers.learning_curve` also carry the gain on held-out queries about
    documents seen in training and about new ones: drawn in a second panel. An existing file is
    replaced only with ``overwrite=True``.
    """
    check_output(path, overwrite)
    _save(learning_curve_figure(rows, metric, title), path)


def learning_curve_figure(rows: Sequence[dict[str, float]], metric: str = "ndcg@10", title: str = "") -> Any:
    """The learning-curve figure: a log x axis labelled at the measured sizes only, so labels never overlap."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter

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
    ax.xaxis.set_major_locator(FixedLocator(_spread_ticks(pairs)))
    formatter = ScalarFormatter()
    formatter.set_scientific(False)
    ax.xaxis.set_major_formatter(formatter)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
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
        gain_ax.xaxis.set_major_locator(FixedLocator(_spread_ticks(pairs)))
        gain_ax.xaxis.set_major_formatter(formatter)
        gain_ax.xaxis.set_minor_locator(NullLocator())
        gain_ax.xaxis.set_minor_formatter(NullFormatter())
        gain_ax.set_xlabel("training pairs")
        gain_ax.set_ylabel(f"gain in {metric} over the base model")
        gain_ax.set_title("held-out queries about documents seen in training vs new", fontsize=9)
        gain_ax.legend()
    return fig


def _spread_ticks(values: Sequence[float], max_labels: int = 8) -> list[float]:
    """The measured sizes as tick positions, skipping any closer than 1/``max_labels`` of the log axis to the
    previous one (800 and 919 pairs would print over each other)."""
    import math

    ticks = sorted({float(v) for v in values if v > 0})
    if len(ticks) < 2:
        return ticks
    gap = (math.log10(ticks[-1]) - math.log10(ticks[0])) / max_labels
    kept = [ticks[0]]
    for value in ticks[1:]:
        if math.log10(value) - math.log10(kept[-1]) >= gap:
            kept.append(value)
    return kept


def plot_history(
    history: Sequence[dict[str, float]], metric: str, path: os.PathLike | str, overwrite: bool = False
) -> None:
    """Training loss and validation metric per epoch (an existing file is replaced only with ``overwrite=True``)."""
    check_output(path, overwrite)
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


def plot_refresh_history(
    decisions: Sequence[dict[str, Any]], path: os.PathLike | str, metric: str = "ndcg@10", overwrite: bool = False
) -> None:
    """The metric of the base model, the live adapter and each candidate on every refresh's held-out queries.

    Promoted candidates are filled green dots, refused ones red crosses: the history at a glance. Each tick
    names the run, when it ran (its date, or its time where several runs share a date) and its version.
    The store redraws its own chart; elsewhere an existing file is replaced only with ``overwrite=True``.
    """
    check_output(path, overwrite)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(decisions) + 2), 4))
    x = list(range(len(decisions)))
    for name, style in (("base", "--"), ("live", "-")):
        ax.plot(
            x,
            [d["scores"].get(name) for d in decisions],
            style,
            marker=".",
            label=name if name != "base" else "base model",
        )
    promoted = [(i, d) for i, d in enumerate(decisions) if d.get("action") == "promoted"]
    refused = [(i, d) for i, d in enumerate(decisions) if d.get("action") != "promoted" and "candidate" in d["scores"]]
    ax.scatter(
        [i for i, _ in promoted],
        [d["scores"]["candidate"] for _, d in promoted],
        color="tab:green",
        zorder=3,
        label="candidate, promoted",
    )
    ax.scatter(
        [i for i, _ in refused],
        [d["scores"]["candidate"] for _, d in refused],
        color="tab:red",
        marker="x",
        zorder=3,
        label="candidate, kept back",
    )
    ticks, when = _run_labels(decisions)
    step = max(1, len(ticks) // 24)  # at most ~24 labels, however many runs
    ax.set_xticks(x[::step], ticks[::step], fontsize=7)
    ax.set_xlabel(f"refresh run: number, {when}, version it stored", fontsize=8)
    ax.set_ylabel(f"{metric} on each run's newest (held-out) queries")
    ax.set_title("adapter refreshes", fontsize=9)
    ax.legend(fontsize=8)
    _save(fig, path)


def _run_labels(decisions: Sequence[dict[str, Any]]) -> tuple[list[str], str]:
    """Tick labels (run number, when it ran, its version) and what "when" is: the date where every run has
    its own, else the time of day (all on one date) or date and time; never one date repeated at every tick."""
    times = [str(d.get("time", "")) for d in decisions]
    dates = [t[:10] for t in times]
    if len(set(dates)) == len(dates):
        moments, what = dates, "date"
    elif len(set(dates)) == 1:
        moments, what = [t[11:19] for t in times], f"time on {dates[0]} (UTC)"
    else:
        moments, what = [f"{t[5:10]}\n{t[11:16]}" for t in times], "date and time (UTC)"
    labels = [f"#{i + 1}\n{m or '-'}\n{d.get('version') or '-'}" for i, (m, d) in enumerate(zip(moments, decisions))]
    return labels, what

"""PNG plots for the worker report (matplotlib, from the `bench` extra)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = ["drain_curves", "latency_cdf", "memory_curve"]

COLORS = {"ours": "tab:green", "ours-before": "tab:blue", "arq-tuned": "tab:orange", "arq-default": "tab:red"}


def latency_cdf(series: dict[str, list[float]], path: Path, title: str) -> None:
    """Cumulative distribution of pickup latency (ms, log scale), one line per kind."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for kind, samples in series.items():
        xs = sorted(samples)
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.step(xs, ys, where="post", label=kind, color=COLORS.get(kind))
    ax.set_xscale("log")
    ax.set_xlabel("enqueue to job start (ms, log scale)")
    ax.set_ylabel("fraction of jobs")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def drain_curves(series: dict[str, list[tuple[float, int]]], path: Path, title: str) -> None:
    """Jobs run against seconds since the backlog came due, one line per kind."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for kind, curve in series.items():
        total = curve[0][1]
        label = f"{kind} ({total:,} jobs)"
        ax.plot([t for t, _ in curve], [total - n for _, n in curve], label=label, color=COLORS.get(kind))
    ax.set_xlabel("seconds since the backlog came due")
    ax.set_ylabel("jobs run")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def memory_curve(series: dict[str, list[tuple[int, float]]], path: Path) -> None:
    """Worker RSS against jobs run, one line per kind (one run each)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for kind, points in series.items():
        ax.plot(
            [n for n, _ in points], [m for _, m in points], marker="o", label=kind, color=COLORS.get(kind)
        )
    ax.set_xlabel("jobs run")
    ax.set_ylabel("worker RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.set_title("Worker memory over 100,000 no-op jobs")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

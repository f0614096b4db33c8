"""Matplotlib (Agg) figures of the report, each saved as a PNG under ``RUN_DIR/report/`` (atomically)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from synthmed.io import atomic_write_bytes
from synthmed.report.collect import ClassifierRuns, mean_ci, per_class_recall


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def class_counts(summary: dict[str, Any], path: Path) -> Path:
    """Grouped bars: images per class in each split (log scale when the profile is long-tailed)."""
    plt = _plt()
    classes = list(summary.get("classes", []))
    splits = {k: v for k, v in summary.get("splits", {}).items() if isinstance(v, dict)}
    if "train_pool" in summary:
        splits = {"train_pool": summary["train_pool"], **splits}
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(classes) + 2), 3.2))
    width = 0.8 / max(1, len(splits))
    x = np.arange(len(classes))
    top = 1
    for i, (name, block) in enumerate(splits.items()):
        counts = list(block.get("per_class", []))[: len(classes)]
        counts += [0] * (len(classes) - len(counts))
        top = max(top, max(counts, default=1))
        ax.bar(x + (i - (len(splits) - 1) / 2) * width, counts, width, label=f"{name} ({block.get('total', sum(counts))})")
    train = splits.get("train", {}).get("per_class", [])
    if train and min(train) > 0 and max(train) / min(train) >= 10:
        ax.set_yscale("log")
    ax.set_xticks(x, classes, rotation=30, ha="right")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    ax.set_title("images per class and split")
    return _save(fig, path)


def metric_vs_param(df: Any, param: str, metric: str, path: Path, baselines: dict[str, float] | None = None,
                    xlabel: str | None = None) -> Path:
    """Mean metric (over seeds) vs a swept value, one line per policy, with a 95% CI band."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for policy, sub in df.groupby("policy"):
        xs, ms, los, his = [], [], [], []
        for value, grp in sorted(sub.groupby(param), key=lambda kv: float(kv[0])):
            m, lo, hi, _ = mean_ci([float(v) for v in grp[metric].tolist()])
            xs.append(float(value))
            ms.append(m)
            los.append(lo if math.isfinite(lo) else m)
            his.append(hi if math.isfinite(hi) else m)
        line = ax.plot(xs, ms, marker="o", label=str(policy))[0]
        ax.fill_between(xs, los, his, alpha=0.2, color=line.get_color())
    for label, value in (baselines or {}).items():
        if math.isfinite(value):
            ax.axhline(value, linestyle="--", linewidth=1, color="gray")
            ax.annotate(label, (ax.get_xlim()[0], value), fontsize=7, color="gray", va="bottom")
    ax.set_xlabel(xlabel or param)
    ax.set_ylabel(f"{metric} (real test)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{metric} vs {param} (mean, 95% CI over seeds)")
    return _save(fig, path)


def recall_bars(runs: ClassifierRuns, classes: Sequence[str], policies: Sequence[str], path: Path) -> Path:
    """Per-class recall on real test, mean over seeds, one bar per policy."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(classes) + 2), 3.4))
    width = 0.8 / max(1, len(policies))
    x = np.arange(len(classes))
    for i, policy in enumerate(policies):
        per_seed = [per_class_recall(m, list(classes)) for m in runs.metrics.get(policy, {}).values()]
        per_seed = [r for r in per_seed if len(r) == len(classes)]
        if not per_seed:
            continue
        mean = np.nanmean(np.asarray(per_seed, dtype=float), axis=0)
        ax.bar(x + (i - (len(policies) - 1) / 2) * width, mean, width, label=policy)
    ax.set_xticks(x, classes, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("recall (real test)")
    ax.legend(fontsize=8, ncol=min(4, max(1, len(policies))))
    ax.set_title("per-class recall (mean over seeds)")
    return _save(fig, path)


def confusion(cm: np.ndarray, classes: Sequence[str], title: str, path: Path) -> Path:
    """Row-normalised confusion matrix (true class per row) with counts."""
    plt = _plt()
    n = cm.shape[0]
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    fig, ax = plt.subplots(figsize=(0.8 * n + 3, 0.8 * n + 2.5))  # counts legible up to ~15 classes
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    labels = list(classes)[:n] if len(classes) >= n else [str(i) for i in range(n)]
    ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=9)
    ax.set_yticks(range(n), labels, fontsize=9)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{cm[i, j]:.0f}", ha="center", va="center", fontsize=10 if n <= 10 else 8,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def sample_grid(real: dict[int, list[np.ndarray]], synthetic: dict[int, list[np.ndarray]], classes: Sequence[str],
                path: Path, per_side: int = 6) -> Path:
    """One row per class: real images on the left, synthetic (kept) images on the right."""
    plt = _plt()
    n = len(classes)
    cols = 2 * per_side + 1
    fig, axes = plt.subplots(n, cols, figsize=(cols * 0.8, n * 0.85 + 0.4), squeeze=False)
    for c in range(n):
        imgs = [*real.get(c, [])[:per_side], *([None] * (per_side - len(real.get(c, [])[:per_side])))]
        imgs += [None] + synthetic.get(c, [])[:per_side]
        for j in range(cols):
            ax = axes[c][j]
            ax.axis("off")
            img = imgs[j] if j < len(imgs) else None
            if img is not None:
                ax.imshow(img[:, :, 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None,
                          vmin=0, vmax=255)
        axes[c][0].set_title(str(classes[c]), fontsize=7, loc="left")  # the full class name, never cut
    fig.suptitle("real (left) vs synthetic, kept (right)", fontsize=9)
    return _save(fig, path)


def training_curves(runs: ClassifierRuns, generator_log: list[tuple[int, float]], path: Path) -> Path | None:
    """Left: real-val balanced accuracy per epoch of every policy (mean over seeds, from metrics.json ``history``);
    right: the generator's training loss (``generator/training_log.csv``, running mean over 20 steps)."""
    curves: dict[str, dict[int, list[float]]] = {}
    for policy, seeds in runs.raw.items():
        for m in seeds.values():
            for row in (m.get("history") or []) if isinstance(m, dict) else []:
                if isinstance(row, dict) and row.get("val_balanced_accuracy") is not None:
                    curves.setdefault(policy, {}).setdefault(int(row["epoch"]), []).append(
                        float(row["val_balanced_accuracy"]))
    if not curves and not generator_log:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for policy, by_epoch in curves.items():
        epochs = sorted(by_epoch)
        axes[0].plot(epochs, [float(np.mean(by_epoch[e])) for e in epochs], marker=".", label=policy)
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("balanced accuracy (real val)")
    axes[0].set_title("classifier training (mean over seeds)")
    if curves:
        axes[0].legend(fontsize=8)
    if generator_log:
        steps = np.array([s for s, _ in generator_log])
        loss = np.array([v for _, v in generator_log], dtype=float)
        k = min(20, len(loss))
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        axes[1].plot(steps, loss, alpha=0.3, lw=0.8)
        axes[1].plot(steps[k - 1:], smooth, lw=1.5)
        axes[1].set_yscale("log")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("generator loss")
    axes[1].set_title("generator training" if generator_log else "generator training (no training_log.csv)")
    return _save(fig, path)

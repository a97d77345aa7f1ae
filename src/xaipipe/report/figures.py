"""Report figures: a grid of images with each method's map, and AUC bar charts."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..utils import atomic_path  # noqa: E402


def _save(fig, paths) -> None:
    for p in paths:
        with atomic_path(p) as tmp:
            fig.savefig(tmp, format=str(p).rsplit(".", 1)[-1], dpi=150, bbox_inches="tight")
    plt.close(fig)


def display_map(saliency: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W) in [0, 1] for display: Σ_c|φ|, clipped at the 99th percentile."""
    m = np.abs(np.asarray(saliency, np.float64)).sum(0)
    hi = np.quantile(m, 0.99)
    return np.clip(m / hi, 0, 1) if hi > 0 else np.zeros_like(m)


def saliency_grid(images: np.ndarray, maps: dict[str, np.ndarray], paths, *,
                  masks: np.ndarray | None = None, titles: list[str] | None = None) -> None:
    """Rows: images (uint8 (N, 3, H, W)); columns: the image, then each method's map
    ((N, C, H, W) per method). The ground-truth mask, if given, is outlined on the image."""
    n, names = len(images), list(maps)
    fig, axes = plt.subplots(n, 1 + len(names), figsize=(1.6 * (1 + len(names)), 1.6 * n),
                             squeeze=False)
    for i in range(n):
        ax = axes[i, 0]
        ax.imshow(images[i].transpose(1, 2, 0))
        if masks is not None:
            ax.contour(masks[i].astype(float), levels=[0.5], colors="white", linewidths=0.6)
        if titles:
            ax.set_ylabel(titles[i], fontsize=7)
        for j, name in enumerate(names):
            axes[i, 1 + j].imshow(display_map(maps[name][i]), cmap="inferno", vmin=0, vmax=1)
    for j, title in enumerate(["image"] + names):
        axes[0, j].set_title(title, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    _save(fig, paths)


def auc_bars(summary: pd.DataFrame, paths, score: str = "auc") -> None:
    """Bars of mean ``score`` per method with 95% CI whiskers; one panel per metric, one bar
    colour per variant."""
    df = summary[summary["score"] == score]
    metrics = sorted(df["metric"].unique()) or ["(none)"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        d = df[df["metric"] == metric]
        methods = list(dict.fromkeys(d["method"]))
        variants = list(dict.fromkeys(d["variant"]))
        width = 0.8 / max(1, len(variants))
        for k, v in enumerate(variants):
            dv = d[d["variant"] == v].set_index("method").reindex(methods)
            x = np.arange(len(methods)) + (k - (len(variants) - 1) / 2) * width
            err = np.vstack([dv["mean"] - dv["ci_low"], dv["ci_high"] - dv["mean"]])
            ax.bar(x, dv["mean"], width, yerr=np.nan_to_num(err), capsize=2, label=v)
        ax.set_xticks(np.arange(len(methods)))
        ax.set_xticklabels(methods, rotation=35, ha="right", fontsize=8)
        better = {"insertion": "higher is better", "deletion": "lower is better"}.get(metric, "")
        ax.set_title(f"{metric} {score} ({better})" if better else f"{metric} {score}",
                     fontsize=9)
        ax.set_ylim(0, max(1.0, float(np.nanmax(d["ci_high"])) if len(d) else 1.0))
        if variants:
            ax.legend(fontsize=7, title="variant", title_fontsize=7)
    fig.tight_layout()
    _save(fig, paths)

"""Figures: confusion matrices (and, through smec_fast.inference, CAM overlays) as PNG files."""

from __future__ import annotations

import io
from pathlib import Path

from smec_fast.atomic import atomic_write_bytes


def figure_bytes(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def save_confusion_matrix(cm: list[list[int]], class_names: list[str] | tuple[str, ...], path: str | Path,
                          title: str = "") -> None:
    """Row-normalised confusion matrix (true class x predicted class) with counts, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.asarray(cm, dtype=float)
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.1 * k + 2, 1.1 * k + 1))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{100 * rates[i, j]:.0f}%\n{int(counts[i, j])}", ha="center", va="center",
                    fontsize=8, color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    atomic_write_bytes(path, figure_bytes(fig))


def save_cam_grid(panels: list[list[tuple]], column_titles: list[str], row_titles: list[str],
                  path: str | Path) -> None:
    """A grid of images: `panels[r][c]` is (uint8 (3, H, W) image, caption), written as one PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(panels), len(panels[0])
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            image, caption = panels[r][c]
            ax = axes[r][c]
            ax.imshow(image.permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(caption, fontsize=8)
            if r == 0:
                ax.set_title(column_titles[c], fontsize=10)
            if c == 0:
                ax.set_ylabel(row_titles[r], fontsize=9)
    fig.tight_layout()
    atomic_write_bytes(path, figure_bytes(fig))

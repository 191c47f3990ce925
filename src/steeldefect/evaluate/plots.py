"""Figures: image galleries with defect masks overlaid (PNG)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from steeldefect.atomic import path_for  # noqa: E402

CLASS_COLOURS = {1: (1.0, 0.2, 0.2), 2: (0.2, 0.9, 0.2), 3: (0.2, 0.5, 1.0), 4: (1.0, 0.8, 0.0), 5: (0.9, 0.3, 0.9)}


OUTLINE_COLOUR = "yellow"  # the predicted defect map's outline (cells at or above the map threshold)


@dataclass
class Tile:
    path: str
    title: str
    masks: dict[int, np.ndarray] = field(default_factory=dict)
    outline: np.ndarray | None = None  # boolean mask at the image's size (predicted defect cells): outlined


def overlay(image: np.ndarray, masks: dict[int, np.ndarray], alpha: float = 0.45) -> np.ndarray:
    """RGB float image with each class's mask tinted in its colour."""
    out = image.astype(float) / 255
    for cls, mask in masks.items():
        colour = np.array(CLASS_COLOURS.get(cls, (1.0, 1.0, 1.0)))
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
    return out


def draw_outline(ax, mask: np.ndarray) -> None:
    """The outline of a boolean mask (at the image's size) over the image, closed along the image's edges."""
    h, w = mask.shape
    padded = np.pad(mask, 1).astype(np.float32)  # a ring of zeros, so the contour closes at the edges
    ax.contour(np.arange(-1, w + 1), np.arange(-1, h + 1), padded, levels=[0.5], colors=[OUTLINE_COLOUR])
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)


def gallery(tiles: list[Tile], out: Path, title: str, empty: str = "nothing to show") -> None:
    """A PNG with one image per row (Severstal images are wide), masks overlaid; says so when empty."""
    rows = max(len(tiles), 1)
    fig, axes = plt.subplots(rows, 1, figsize=(10, 1.0 + 1.9 * rows), squeeze=False)
    fig.suptitle(title)
    if not tiles:
        axes[0, 0].text(0.5, 0.5, empty, ha="center", va="center", fontsize=14)
        axes[0, 0].axis("off")
    for ax, tile in zip(axes[:, 0], tiles):
        with Image.open(tile.path) as im:
            ax.imshow(overlay(np.asarray(im.convert("RGB")), tile.masks), aspect="auto")
        if tile.outline is not None and tile.outline.any():
            draw_outline(ax, tile.outline)
        ax.set_title(tile.title, fontsize=9)
        ax.axis("off")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    with path_for(out) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)

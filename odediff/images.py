"""Pictures written to disk: sample grids and loss curves."""

import math
from pathlib import Path

import numpy as np
from PIL import Image


def image_grid(images: np.ndarray, pad: int = 1, cols: int = 0) -> np.ndarray:
    """uint8 (N, H, W, C) -> one uint8 (rows*H, cols*W, C) mosaic, `cols` images per row
    (0: as square as N allows)."""
    n, h, w, c = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), np.uint8)
    for i, img in enumerate(images):
        r, k = divmod(i, cols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + k * (w + pad) : pad + k * (w + pad) + w] = img
    return grid


def save_grid(images: np.ndarray, path: str | Path, scale: int = 1, cols: int = 0) -> Path:
    """Writes uint8 NHWC images as one PNG grid (`cols` per row), each pixel `scale` x `scale`."""
    grid = image_grid(images, cols=cols)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
    return path


def save_curves(curves: dict[str, tuple[list[int], list[float]]], path: str | Path, ylabel: str = "loss") -> Path:
    """One PNG with a line per named (steps, values) curve, log-scaled y."""
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend (a notebook's) alone

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.subplots()
    for name, (xs, ys) in curves.items():
        ax.plot(xs, ys, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path

"""Patch heatmaps: a latent's activation per patch, upsampled over the image it was measured on.

The pictures suite stores, for each top image, its central square as a small
PNG and the latent's activation on each token as uint8 values relative to the
image's maximum (``patch_map``, base64; see :func:`sae_audit.suites.pictures.compare`).
This module turns them back into activations and draws the overlay the
reports show beside the original: the image in grey, each patch where the
latent fires coloured by its activation there with *viridis* (perceptually uniform, readable
in greyscale and by colour-blind readers; Smith and van der Walt 2015, the
matplotlib default) at a fixed opacity, patches where it is silent left
untinted, patches drawn as blocks
(nearest-neighbour upsampling: what the SAE saw, no invented detail). Every
overlay of one latent shares one scale, 0 to the largest activation among its
shown images, so a weaker image looks weaker.

Everything comes from the results document; a map that does not decode to
the recorded grid is refused (``None``), never guessed.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

#: Smallest side of a drawn overlay in pixels (it is shown larger, pixelated).
OVERLAY_PX = 32
#: Opacity of the colour layer over the grey image.
ALPHA = 0.7
COLOUR_MAP = "viridis"


@dataclass(frozen=True)
class PatchMap:
    """One image's map in activation units.

    Attributes:
        grid: ``[rows, cols]`` float64, the latent's activation on each patch token.
        prefix: ``[n_prefix]`` float64, its activation on the leading non-patch tokens (CLS, registers).
    """

    grid: np.ndarray
    prefix: np.ndarray

    def peak(self) -> tuple[int, int, float]:
        """``(row, column, activation)`` of the strongest patch (0-based)."""
        r, c = np.unravel_index(int(np.argmax(self.grid)), self.grid.shape)
        return int(r), int(c), float(self.grid[r, c])


def decode(pic: dict, grid: dict | None) -> PatchMap | None:
    """The :class:`PatchMap` of one stored picture, or ``None`` (no map, no grid, or a map that does not fit).

    Args:
        pic: a picture of the pictures suite (``activation``, optional ``patch_map``).
        grid: the pair's ``patch_grid`` (``rows``, ``cols``, ``n_prefix``).
    """
    raw = pic.get("patch_map")
    if not raw or not isinstance(grid, dict):
        return None
    try:
        rows, cols, prefix = int(grid["rows"]), int(grid["cols"]), int(grid.get("n_prefix", 0))
        data = base64.b64decode(raw, validate=True)
        scale = float(pic["activation"])
    except (KeyError, TypeError, ValueError, binascii.Error):
        return None
    if rows < 1 or cols < 1 or prefix < 0 or len(data) != prefix + rows * cols or not np.isfinite(scale) \
            or scale < 0:
        return None
    values = np.frombuffer(data, dtype=np.uint8).astype(np.float64) / 255.0 * scale
    return PatchMap(values[prefix:].reshape(rows, cols), values[:prefix])


@lru_cache(maxsize=1)
def _lut() -> np.ndarray:
    """``[256, 3]`` uint8 RGB of the colour map."""
    from matplotlib import colormaps

    return (colormaps[COLOUR_MAP](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def overlay_side(thumb_side: int, rows: int, cols: int, least: int = OVERLAY_PX) -> int:
    """Side of an overlay: the smallest multiple of the grid at least the thumbnail's side and ``least``, so
    every patch is a block of whole pixels and the image is not shrunk."""
    grid = max(rows, cols)
    return grid * max(1, -(-max(thumb_side, least) // grid))


def overlay_png(thumb_png: bytes | None, pmap: PatchMap, vmax: float, px: int | None = None) -> bytes:
    """The overlay as PNG bytes (``px`` x ``px``, default :func:`overlay_side`): the grey image under the
    colour-mapped patches (patches with zero activation untinted).

    ``vmax`` is the activation drawn at the top of the colour map (values above
    are clipped to it); without a thumbnail the patches are drawn alone.
    """
    from PIL import Image

    thumb = Image.open(io.BytesIO(thumb_png)) if thumb_png is not None else None
    if px is None:
        px = overlay_side(max(thumb.size) if thumb is not None else 0, *pmap.grid.shape)
    if thumb is not None:
        base = thumb.convert("L").resize((px, px), Image.Resampling.BICUBIC)
        grey = np.asarray(base, dtype=np.float64)[:, :, None].repeat(3, axis=2)
    else:
        grey = np.full((px, px, 3), 255.0)
    level = np.clip(pmap.grid / vmax, 0, 1) if vmax > 0 else np.zeros_like(pmap.grid)
    codes = (level * 255).round().astype(np.uint8)
    rgba = np.concatenate([_lut()[codes], np.where(pmap.grid > 0, 255, 0).astype(np.uint8)[:, :, None]], axis=2)
    colour = np.asarray(Image.fromarray(rgba, "RGBA").resize((px, px), Image.Resampling.NEAREST), dtype=np.float64)
    alpha = ALPHA * colour[:, :, 3:] / 255  # patches where the latent is silent stay untinted
    out = (1 - alpha) * grey + alpha * colour[:, :, :3]
    return _png(out.round().clip(0, 255).astype(np.uint8))


@lru_cache(maxsize=1)
def colour_bar_png(width: int = 160, height: int = 12) -> bytes:
    """A horizontal strip of the colour map, low on the left (PNG bytes)."""
    row = _lut()[np.linspace(0, 255, width).round().astype(int)]
    return _png(np.repeat(row[None, :, :], height, axis=0))


def thumb_bytes(pic: dict) -> bytes | None:
    """The decoded thumbnail PNG of a picture, or ``None`` (absent, not base64, or not a readable PNG)."""
    from PIL import Image, UnidentifiedImageError

    raw = pic.get("png")
    if not raw or not isinstance(raw, str):
        return None
    try:
        data = base64.b64decode(raw, validate=True)
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "PNG" or im.width * im.height > 1024 * 1024:
                return None
            im.verify()
        return data
    except (binascii.Error, ValueError, TypeError, OSError, UnidentifiedImageError, Image.DecompressionBombError):
        return None


__all__ = ["ALPHA", "COLOUR_MAP", "OVERLAY_PX", "PatchMap", "colour_bar_png", "decode", "overlay_png", "overlay_side",
           "thumb_bytes"]

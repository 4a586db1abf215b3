"""Image corruptions at five severities (ImageNet-C style) and the image set they make.

Hendrycks and Dietterich 2019, "Benchmarking Neural Network Robustness to
Common Corruptions and Perturbations" (arXiv 1903.12261): the four
corruptions here use the constants of their ``make_imagenet_c.py``, applied to
the image at its own size.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from sae_audit.data import ImageSet
from sae_audit.errors import SaeAuditError

__version__ = "0.1.0"
__all__ = ["CORRUPTIONS", "CorruptedSet", "corrupt", "parse_spec"]

#: kind -> (what the parameter is, its value at severity 1..5)
CORRUPTIONS: dict[str, tuple[str, tuple[float, ...]]] = {
    "gaussian_noise": ("noise std (pixel range 0..1)", (0.08, 0.12, 0.18, 0.26, 0.38)),
    "gaussian_blur": ("blur std (pixels)", (1, 2, 3, 4, 6)),
    "jpeg": ("JPEG quality", (25, 18, 15, 10, 7)),
    "contrast": ("contrast factor about the per-channel mean", (0.4, 0.3, 0.2, 0.1, 0.05)),
}


def _check(kind: str, severity: int) -> float:
    if kind not in CORRUPTIONS:
        raise SaeAuditError(f"unknown corruption {kind!r}; known: {', '.join(CORRUPTIONS)}")
    if not isinstance(severity, int) or not 1 <= severity <= 5:
        raise SaeAuditError(f"corruption severity must be an integer from 1 to 5, got {severity!r}")
    return CORRUPTIONS[kind][1][severity - 1]


def corrupt(image: Image.Image, kind: str, severity: int, seed: int | Sequence[int] = 0) -> Image.Image:
    """Corrupt an RGB image.

    Args:
        image: an 8-bit ``RGB`` Pillow image (any size).
        kind: one of :data:`CORRUPTIONS`.
        severity: 1 (mild) to 5 (severe).
        seed: seeds the Gaussian noise (an int or a sequence of ints, as
            :class:`numpy.random.SeedSequence` takes; the other kinds are deterministic).

    Returns:
        A new 8-bit ``RGB`` image of the same size.

    Raises:
        SaeAuditError: unknown ``kind`` or ``severity`` outside 1..5.
    """
    c = _check(kind, severity)
    image = image.convert("RGB")
    if kind == "gaussian_blur":
        return image.filter(ImageFilter.GaussianBlur(radius=c))  # Pillow's radius is the std
    if kind == "jpeg":
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=int(c))
        buf.seek(0)
        with Image.open(buf) as out:
            return out.convert("RGB")
    x = np.asarray(image, dtype=np.float64) / 255.0
    if kind == "gaussian_noise":
        x = x + np.random.default_rng(seed).normal(0.0, c, size=x.shape)
    else:  # contrast
        means = x.mean(axis=(0, 1), keepdims=True)
        x = (x - means) * c + means
    return Image.fromarray(np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8), "RGB")


def parse_spec(argument: str) -> tuple[str, int, str]:
    """Split ``KIND:SEVERITY:BASE`` (what follows ``corrupt:`` in a set spec).

    Raises:
        SaeAuditError: the argument does not have that shape, or names an
            unknown kind or a severity outside 1..5.
    """
    kind, sep1, rest = argument.partition(":")
    sev, sep2, base = rest.partition(":")
    if not (sep1 and sep2 and kind and sev and base):
        raise SaeAuditError(
            f"corrupted image set 'corrupt:{argument}' must be written corrupt:KIND:SEVERITY:BASE, e.g. "
            f"corrupt:gaussian_noise:3:fashion-mnist:test (kinds: {', '.join(CORRUPTIONS)})"
        )
    try:
        severity = int(sev)
    except ValueError:
        raise SaeAuditError(f"corruption severity must be an integer from 1 to 5, got {sev!r}") from None
    _check(kind, severity)
    return kind, severity, base


class CorruptedSet(ImageSet):
    """Every image of ``base`` with one corruption at one severity (lazy, deterministic).

    Labels and classes are the base set's; the noise of image ``i`` is seeded
    by ``(seed, i)``. The name is built from the base set's short name
    (``corrupt:jpeg:3:digits``; a folder's base name, never its full path);
    provenance follows ``base`` (image ``i`` is the base's image ``i``).

    Raises:
        SaeAuditError: unknown kind or severity outside 1..5.
    """

    def __init__(self, base: ImageSet, kind: str, severity: int, seed: int = 0, name: str | None = None):
        self.parameter = _check(kind, severity)
        self.base, self.kind, self.severity, self.seed = base, kind, severity, seed
        self.name = name or f"corrupt:{kind}:{severity}:{base.name}"
        self.source = f"{base.source} with {kind} at severity {severity} (sae-audit-corruptions)"
        self.classes = base.classes

    def __len__(self) -> int:
        return len(self.base)

    def _open(self, i: int) -> Image.Image:
        return corrupt(self.base.load(i), self.kind, self.severity, seed=(self.seed, i))

    def label(self, i: int) -> int:
        return self.base.label(i)

    def item_id(self, i: int) -> str:
        return f"{self.base.item_id(i)} [{self.kind}@{self.severity}]"

    def item_file(self, i: int):
        return self.base.item_file(i)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["corruption"] = {
            "kind": self.kind,
            "severity": self.severity,
            "parameter": self.parameter,
            "parameter_meaning": CORRUPTIONS[self.kind][0],
            "base": self.base.name,
        }
        return d

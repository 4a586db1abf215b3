"""How an image set is read: the image part of every request."""

from __future__ import annotations

from dataclasses import dataclass

from sae_audit.data.base import DEFAULT_MAX_PIXELS
from sae_audit.errors import SaeAuditError
from sae_audit.options import option

#: The largest batch accepted (images per forward pass).
MAX_BATCH_SIZE = 65_536


@dataclass(frozen=True)
class ImageOptions:
    """How images are read, batched and subsampled (:func:`sae_audit.data.open_image_set`,
    :func:`sae_audit.data.iter_batches`).

    Raises:
        SaeAuditError: a field out of range (the message names the field).
    """

    batch_size: int = option(32, metavar="N", help="images per forward pass")
    max_images: int | None = option(
        None, metavar="N", help="use at most N images of each set (a fixed pseudo-random subset, see seed)")
    seed: int = option(0, help="seed for subsets, shuffling and initialisation")
    max_pixels: int = option(DEFAULT_MAX_PIXELS, metavar="N",
                             help="decode at most N pixels per image (larger JPEGs are decoded reduced, other larger "
                                  "images are skipped and counted as unreadable): bounds memory on hostile or huge "
                                  "images")
    strict: bool = option(
        False, help="fail on an unreadable image instead of skipping and counting it (an audit also fails on a "
                    "suite that needs labels when a set has none, instead of skipping it there)")

    def __post_init__(self) -> None:
        for name, low, high in (("batch_size", 1, MAX_BATCH_SIZE), ("max_images", 1, None),
                                ("max_pixels", 64, None)):
            value = getattr(self, name)
            if value is None and name == "max_images":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < low or (high and value > high):
                bound = f"between {low} and {high:,}" if high else f"at least {low}"
                raise SaeAuditError(f"`{name}` must be a whole number {bound}, got {value!r}", field=name)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise SaeAuditError(f"`seed` must be an integer, got {self.seed!r}", field="seed")

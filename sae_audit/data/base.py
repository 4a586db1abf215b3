"""The image-set abstraction shared by folders, IDX files and the demo sets.

An :class:`ImageSet` is a finite, indexed, deterministic sequence of images:
``load(i)`` always returns the same 8-bit RGB :class:`PIL.Image.Image` for the
same ``i`` on every machine, and ``label(i)`` its integer class (``-1`` when
the set is unlabeled). Sets are cheap to construct and decode lazily, one image
per ``load`` call, so they scale to folders far larger than memory.

:func:`to_rgb` is the single place where every Pillow mode (grey, 16-bit,
palette, alpha, CMYK, bilevel, animated) becomes 8-bit RGB, so all sources feed
the model's image processor the same kind of image.
"""

from __future__ import annotations

import os
import struct
import zlib
from abc import ABC, abstractmethod
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sae_audit.errors import SaeAuditError

__all__ = [
    "DECODE_ERRORS",
    "DEFAULT_MAX_PIXELS",
    "MAX_IMAGE_FILE_BYTES",
    "ImageSet",
    "Subset",
    "UnreadableImageError",
    "subsample",
    "to_rgb",
]

#: Exceptions Pillow (and the codecs under it) raise on a corrupt, truncated or
#: non-image file. ``UnidentifiedImageError`` and "image file is truncated" are
#: ``OSError``; broken PNG chunks raise ``SyntaxError``; a few decoders raise
#: ``ValueError``, ``EOFError``, ``struct.error`` or ``zlib.error``.
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)


#: Default cap on the pixels decoded per image (4096 x 4096 = 16,777,216): 16 times the area of the
#: largest input a common vision model takes (1024 x 1024) and 334 times a 224 x 224 one, so no model
#: needs more; it bounds one decoded image to 64 MiB of RGBA. Larger JPEGs are decoded at 1/2, 1/4 or
#: 1/8 scale (libjpeg's DCT scaling, Pillow's ``draft``) to fit; other formats cannot be decoded
#: reduced and are skipped as unreadable, naming the cap. Change it per set (``max_pixels``).
DEFAULT_MAX_PIXELS = 4096 * 4096
#: Largest image file read (256 MiB), larger than any image within :data:`DEFAULT_MAX_PIXELS`
#: stored uncompressed at 16 bytes a pixel.
MAX_IMAGE_FILE_BYTES = 256 << 20


def check_max_pixels(max_pixels: int | None) -> int | None:
    """``max_pixels`` when it is a positive int or ``None`` (no cap beyond Pillow's own); SaeAuditError otherwise."""
    if max_pixels is None:
        return None
    if not isinstance(max_pixels, int) or isinstance(max_pixels, bool) or max_pixels < 1:
        raise SaeAuditError(f"max_pixels must be a positive integer (pixels per image) or None, got {max_pixels!r}")
    return max_pixels


def limit_pixels(img: Image.Image, max_pixels: int | None) -> Image.Image:
    """Make sure decoding ``img`` (opened, not yet loaded) yields at most ``max_pixels`` pixels.

    A JPEG over the cap is set to decode at the largest of 1/2, 1/4, 1/8 scale
    that fits (Pillow's :meth:`~PIL.Image.Image.draft`; nothing is decoded here).

    Raises:
        ValueError: the image is over the cap and its format cannot be decoded
            reduced enough (the message gives its size and the cap).
    """
    if max_pixels is None:
        return img
    w, h = img.size
    if w * h <= max_pixels:
        return img
    if img.format in ("JPEG", "MPO"):
        for d in (2, 4, 8):
            if -(-w // d) * -(-h // d) <= max_pixels:
                img.draft(None, (max(1, w // d), max(1, h // d)))
                break
        if img.size[0] * img.size[1] <= max_pixels:
            return img
    raise ValueError(
        f"image is {w}x{h} = {w * h:,} pixels, over the {max_pixels:,}-pixel decoding cap (max_pixels); "
        "downscale it, or raise max_pixels if you have the memory"
    )


class UnreadableImageError(SaeAuditError):
    """One image of a set could not be read or decoded.

    Attributes:
        item_id: the set's id for the image (a path relative to the folder
            root, or ``file#index``).
        reason: a one-line description of the failure (exception type and
            message).
    """

    def __init__(self, item_id: str, reason: str, set_name: str = "") -> None:
        self.item_id = item_id
        self.reason = reason
        where = f" in image set {set_name!r}" if set_name else ""
        super().__init__(
            f"cannot read image {item_id!r}{where}: {reason}. "
            "Remove or re-export the file, or run without strict mode to skip it."
        )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnidentifiedImageError):
        # Pillow's message names an in-memory buffer; say what it means instead.
        return "UnidentifiedImageError: not a recognised image format (or a corrupt header)"
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


# --------------------------------------------------------------------------- #
# Mode conversion
# --------------------------------------------------------------------------- #

_WHITE = (255, 255, 255)


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    """Alpha-composite an ``RGBA`` image onto an opaque white background."""
    # paste-with-mask is one pass and gives the same result as
    # Image.alpha_composite onto opaque white, at less than half the cost.
    background = Image.new("RGB", rgba.size, _WHITE)
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _u16_to_u8(a: np.ndarray) -> np.ndarray:
    """Map 0..65535 to 0..255 with rounding (65535 -> 255, 257*k -> k)."""
    a = np.clip(a.astype(np.int64), 0, 65535)
    return ((a * 255 + 32767) // 65535).astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow image to an 8-bit ``RGB`` image.

    Rules, by source mode:

    - animated images (GIF, APNG, WebP): the first frame only;
    - ``RGB``: returned as is (already loaded);
    - ``L``, ``1``: replicated to three channels (``1`` -> 0 or 255);
    - ``I;16*`` (16-bit grey) and ``I`` (32-bit int, taken as 16-bit data, as
      Pillow opens 16-bit PNG/TIFF): clipped to 0..65535 and scaled by
      255/65535 with rounding;
    - ``F`` (float): values in [0, 1] are scaled by 255, otherwise clipped to
      0..255 (Pillow's own convention for float images is 0..255);
    - ``RGBA``, ``LA``, ``PA``, ``RGBa``, ``La`` and any image carrying a
      ``transparency`` entry (palette or grey/RGB tRNS): composited onto
      white, so transparent clip-art backgrounds are white, not black;
    - ``P`` without transparency, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``:
      Pillow's own conversion.

    Args:
        img: any Pillow image (it is loaded here; decoding errors propagate).

    Returns:
        A new (or the same, when already RGB) ``RGB`` image, ``uint8`` per
        channel, same width and height.

    Raises:
        The decoder's exception (see :data:`DECODE_ERRORS`) when the pixel
        data cannot be decoded.
    """
    if getattr(img, "is_animated", False) or getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    img.load()
    mode = img.mode

    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I;16") or mode == "I":
        return Image.fromarray(_u16_to_u8(np.asarray(img)), "L").convert("RGB")
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
        if a.size and a.min() >= 0.0 and a.max() <= 1.0:
            a = a * 255.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        return _composite_on_white(img.convert("RGBA"))
    if mode == "1":
        return img.convert("L").convert("RGB")
    return img.convert("RGB")


# --------------------------------------------------------------------------- #
# ImageSet
# --------------------------------------------------------------------------- #


class ImageSet(ABC):
    """A finite, indexed, deterministic set of images with optional labels.

    Subclasses implement :meth:`__len__`, :meth:`_open` (a raw Pillow image for
    index ``i``), :meth:`label` and :meth:`item_id`, and set ``name``,
    ``source`` and ``classes``. :meth:`load` adds decoding, EXIF orientation
    and :func:`to_rgb` conversion, and turns decoder failures into
    :class:`UnreadableImageError`.

    **Provenance.** ``results.json`` identifies each set by a content hash
    (:func:`sae_audit.results.dataset_fingerprint`) and lists the plugins that
    took part in the audit. Both read only this contract:

    - :meth:`item_id` and :meth:`label` of every image (always hashed);
    - :meth:`item_file`: the file image ``i`` is decoded from, when each image
      is a file of its own (its size is hashed; default ``None``);
    - :meth:`content_files`: files whose bytes identify the whole set (an IDX
      file and its labels, a sprite sheet; default: the base's, else none);
    - ``base``: a set derived from another one (a subset, a corrupted or
      rotated copy) names it here, so the base's content files and the plugin
      that made the base count too (:meth:`lineage`);
    - ``registered_by``: the plugin whose registered factory built the set,
      filled in by the image-set registry (``None`` when sae-audit opened it
      from a path).

    A wrapper whose image ``i`` is image ``j`` of its base (``j = i`` for a
    corrupted copy) implements ``item_file(i)`` as ``self.base.item_file(j)``.

    Attributes:
        name: short, readable name used in reports, results and ``--fail-on``
            qualifiers (``fashion-mnist:test``, a folder's base name,
            ``corrupt:jpeg:3:digits``): build a wrapper's name from its base's
            ``name``, never from the path the user typed.
        source: where the images come from (a path, or a package and path), for people.
        classes: class names, ``classes[label(i)]`` is the class of image
            ``i``; ``None`` when the set is unlabeled or its labels have no
            names.
        base: the set this one is derived from, or ``None``.
        registered_by: the plugin whose factory built this set, or ``None``.
    """

    name: str = "images"
    source: str = ""
    classes: list[str] | None = None
    base: "ImageSet | None" = None
    registered_by: str | None = None
    #: Pixels decoded per image at most (see :data:`DEFAULT_MAX_PIXELS`); ``None``: Pillow's own limit only.
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    @abstractmethod
    def __len__(self) -> int:
        """Number of images."""

    @abstractmethod
    def _open(self, i: int) -> Image.Image:
        """Return the raw Pillow image for a valid index ``i`` (any mode)."""

    def label(self, i: int) -> int:
        """Integer class of image ``i``; ``-1`` when unlabeled."""
        self._check_index(i)
        return -1

    def item_id(self, i: int) -> str:
        """A stable, human-readable id for image ``i`` (used in skip lists)."""
        self._check_index(i)
        return f"{self.name}#{i}"

    def item_file(self, i: int) -> "os.PathLike[str] | str | None":
        """The file image ``i`` is decoded from, when each image is a file of its own; ``None`` otherwise.

        Its size goes into the content hash. Default ``None``.
        """
        self._check_index(i)
        return None

    def content_files(self) -> list["os.PathLike[str] | str"]:
        """Files whose bytes identify the whole set (an IDX file and its labels, a sprite sheet).

        They are hashed whole into the content hash. Default: the base set's, or none.
        """
        return self.base.content_files() if self.base is not None else []

    def lineage(self) -> list["ImageSet"]:
        """This set, its base, the base's base, ... (at most 32 deep; a cycle stops it)."""
        out: list[ImageSet] = []
        s: ImageSet | None = self
        while s is not None and len(out) < 32 and all(s is not o for o in out):
            out.append(s)
            s = getattr(s, "base", None)
        return out

    def load(self, i: int) -> Image.Image:
        """Decode image ``i``.

        Returns:
            A fully loaded 8-bit ``RGB`` :class:`PIL.Image.Image` (EXIF
            orientation applied; first frame of animations; alpha composited
            onto white; see :func:`to_rgb`).

        At most :attr:`max_pixels` pixels are decoded: the size is read from
        the header first, and a JPEG over the cap is decoded at a reduced scale
        (see :func:`limit_pixels`).

        Raises:
            IndexError: ``i`` is not in ``range(len(self))``.
            UnreadableImageError: the file is missing, not a regular file (a
                FIFO, a device), truncated, not an image, over the pixel cap or
                otherwise undecodable (a :class:`SaeAuditError` naming the item).
        """
        self._check_index(i)
        try:
            img = limit_pixels(self._open(i), self.max_pixels)
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            img.load()
            if "exif" in img.info or img.format in ("JPEG", "WEBP", "TIFF", "MPO"):
                img = ImageOps.exif_transpose(img)
            return to_rgb(img)
        except UnreadableImageError:
            raise
        except DECODE_ERRORS as exc:
            raise UnreadableImageError(self.item_id(i), _reason(exc), self.name) from exc

    def describe(self) -> dict[str, Any]:
        """A JSON-serialisable summary: ``name``, ``source``, ``size``, ``classes``."""
        return {
            "name": self.name,
            "source": self.source,
            "size": len(self),
            "classes": list(self.classes) if self.classes is not None else None,
        }

    def _check_index(self, i: int) -> None:
        n = len(self)
        if not (0 <= int(i) < n):
            raise IndexError(f"image index {i} out of range for {self.name!r} with {n} images")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}: {len(self)} images>"


class Subset(ImageSet):
    """A view of ``base`` restricted to ``indices`` (in the given order).

    ``label``, ``load`` and ``item_id`` delegate to the base set, so item ids
    (paths) stay those of the base. :meth:`base_index` maps back.
    """

    def __init__(self, base: ImageSet, indices: Sequence[int], *, seed: int | None = None) -> None:
        self.base = base
        self.indices = [int(j) for j in indices]
        n = len(base)
        for j in self.indices:
            if not (0 <= j < n):
                raise IndexError(f"subset index {j} out of range for {base.name!r} with {n} images")
        self.seed = seed
        self.name = base.name
        self.source = base.source
        self.classes = base.classes

    def __len__(self) -> int:
        return len(self.indices)

    def base_index(self, i: int) -> int:
        """Index in the base set of this subset's image ``i``."""
        self._check_index(i)
        return self.indices[i]

    def _open(self, i: int) -> Image.Image:  # pragma: no cover - load delegates
        return self.base._open(self.indices[i])

    @property  # type: ignore[override]
    def max_pixels(self) -> int | None:
        """The base set's cap (images are decoded by the base set)."""
        return self.base.max_pixels

    @max_pixels.setter
    def max_pixels(self, value: int | None) -> None:
        self.base.max_pixels = check_max_pixels(value)

    def load(self, i: int) -> Image.Image:
        return self.base.load(self.base_index(i))

    def label(self, i: int) -> int:
        return self.base.label(self.base_index(i))

    def item_id(self, i: int) -> str:
        return self.base.item_id(self.base_index(i))

    def item_file(self, i: int):
        return self.base.item_file(self.base_index(i))

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["subset_of"] = len(self.base)
        d["seed"] = self.seed
        return d


_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a ``uint64`` array (wrapping arithmetic).

    Pure integer arithmetic: identical on every platform and numpy version,
    unlike numpy's ``Generator`` streams, which numpy does not promise to keep.
    """
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def subsample(image_set: ImageSet, max_images: int | None, seed: int = 0) -> ImageSet:
    """A fixed pseudo-random subset of at most ``max_images`` images.

    Each index ``j`` gets the key ``splitmix64(splitmix64(seed) ^ j)``; the
    ``max_images`` smallest keys are kept and returned in increasing index
    order. Hence the same ``(len(image_set), seed)`` picks the same images on
    every machine, and a smaller ``max_images`` picks a subset of what a larger
    one picks (nested subsamples).

    Args:
        image_set: the set to subsample.
        max_images: the size cap; ``None`` or ``>= len(image_set)`` returns
            ``image_set`` itself.
        seed: any integer (taken modulo 2**64).

    Returns:
        ``image_set`` itself or a :class:`Subset` of it.

    Raises:
        SaeAuditError: ``max_images`` is less than 1.
    """
    if max_images is None:
        return image_set
    if int(max_images) < 1:
        raise SaeAuditError(f"max_images must be at least 1, got {max_images}")
    n = len(image_set)
    k = int(max_images)
    if k >= n:
        return image_set
    salt = _splitmix64(np.array([int(seed) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    keys = _splitmix64(np.arange(n, dtype=np.uint64) ^ salt)
    chosen = np.argsort(keys, kind="stable")[:k]
    return Subset(image_set, np.sort(chosen).tolist(), seed=seed)

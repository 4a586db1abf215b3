"""Image sets: folders, IDX files and built-in demo sets, and batching them.

Entry point: :func:`open_image_set` turns a user's spec (a named set such as
``fashion-mnist:test``, a folder, or an IDX images file) into an
:class:`ImageSet`; :func:`iter_batches` decodes it in batches through the
model's preprocessing, skipping (and recording) unreadable images.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from sae_audit.data.base import (
    DEFAULT_MAX_PIXELS,
    ImageSet,
    Subset,
    UnreadableImageError,
    check_max_pixels,
    subsample,
    to_rgb,
)
from sae_audit.data.demo import DigitsSet, SklearnDigitsSet
from sae_audit.data.folder import IMAGE_EXTENSIONS, ImageFolderSet
from sae_audit.data.idx import IdxSet, read_idx
from sae_audit.data.loader import Batch, BatchIterator, iter_batches
from sae_audit.data.options import ImageOptions
from sae_audit.data.registry import list_named_sets, named_set_descriptions, open_registered
from sae_audit.errors import SaeAuditError
from sae_audit.safe_files import check_regular, open_regular, printable

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "Batch",
    "BatchIterator",
    "DigitsSet",
    "IdxSet",
    "ImageOptions",
    "ImageFolderSet",
    "ImageSet",
    "SklearnDigitsSet",
    "Subset",
    "UnreadableImageError",
    "find_idx_labels",
    "iter_batches",
    "list_named_sets",
    "named_set_descriptions",
    "open_image_set",
    "read_idx",
    "subsample",
    "to_rgb",
]

# "<prefix>-images-idx3-ubyte[.gz]" (Fashion-MNIST) or "<prefix>-images.idx3-ubyte" (MNIST).
_IDX_IMAGES_RE = re.compile(r"^(?P<prefix>.*)images(?P<sep>[-.])idx[34]-ubyte(?P<gz>\.gz)?$")


def find_idx_labels(images_path: str | os.PathLike[str]) -> Path | None:
    """The labels file next to an IDX images file, if it follows MNIST naming.

    ``X-images-idx3-ubyte[.gz]`` -> ``X-labels-idx1-ubyte[.gz]`` (also
    ``X-images.idx3-ubyte`` -> ``X-labels.idx1-ubyte``), trying the same
    compression first, then the other. Returns ``None`` when the name does not
    follow that pattern or no such file exists.
    """
    p = Path(images_path)
    m = _IDX_IMAGES_RE.match(p.name)
    if m is None:
        return None
    stem = f"{m['prefix']}labels{m['sep']}idx1-ubyte"
    order = [".gz", ""] if m["gz"] else ["", ".gz"]
    for suffix in order:
        cand = p.with_name(stem + suffix)
        if cand.is_file():
            return cand
    return None


def _looks_like_idx(path: Path) -> bool:
    if _IDX_IMAGES_RE.match(path.name) or "idx" in path.name.lower():
        return True
    try:
        with open_regular(path, "image set file") as f:
            head = f.read(4)
    except (OSError, SaeAuditError):
        return False
    return len(head) == 4 and head[:3] == b"\x00\x00\x08" and head[3] in (3, 4)


def open_image_set(spec: str | os.PathLike[str], max_images: int | None = None, seed: int = 0, *,
                   max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageSet:
    """Open an image set from a user's spec.

    ``spec`` is tried in this order:

    1. a named set (``fashion-mnist:test``, ``digits``, ...) or a set family
       (``corrupt:gaussian_noise:3:fashion-mnist:test``) registered by the
       built-in plugin or another plugin (``sae-audit sets`` lists them); to
       open a folder that has such a name, write it as a path (``./digits``);
    2. a folder: :class:`ImageFolderSet` (class = first-level subfolder);
    3. an IDX images file (``.gz`` or raw): :class:`IdxSet`, with the labels
       file found next to it by :func:`find_idx_labels` (unlabeled if none).

    Args:
        spec: the name or path (``~`` is expanded).
        max_images: keep a fixed pseudo-random subset of at most this many
            images (:func:`subsample`); ``None`` keeps all.
        seed: the subsample's seed.
        max_pixels: the most pixels decoded per image (default
            :data:`~sae_audit.data.base.DEFAULT_MAX_PIXELS`, 4096 x 4096); larger
            images are skipped as unreadable (JPEGs are first decoded at a
            reduced scale when that fits). ``None``: Pillow's own limit only.

    Returns:
        An :class:`ImageSet` (a :class:`Subset` when subsampled).

    Raises:
        SaeAuditError: unknown name that is not an existing path (the message
            lists the known names); a file that is not an IDX images file; the
            errors of the set's constructor (empty folder, corrupt IDX,
            missing package, ...); a path that is a FIFO, a device or a
            broken link; ``max_images < 1``; a bad ``max_pixels``. A plugin's factory
            that fails otherwise raises
            :class:`~sae_audit.plugin_manager.PluginError` (a subclass) naming it.
    """
    text = os.fspath(spec)
    check_max_pixels(max_pixels)
    image_set = open_registered(text)
    if image_set is None:
        path = Path(text).expanduser()
        if path.is_dir():
            image_set = ImageFolderSet(path, max_pixels=max_pixels)
        elif os.path.lexists(path) and not path.is_file():
            check_regular(path, "image set")  # raises, naming what it is (FIFO, device, broken link)
        elif path.is_file():
            if not _looks_like_idx(path):
                raise SaeAuditError(
                    f"{text!r} is a file but not an IDX images file; pass a folder of images, "
                    f"an IDX file, or one of the named sets: {', '.join(list_named_sets())}"
                )
            image_set = IdxSet(path, find_idx_labels(path), max_pixels=max_pixels)
        else:
            known = "\n".join(f"  {name}: {desc}" for name, desc in named_set_descriptions().items())
            raise SaeAuditError(
                f"image set {printable(text)!r} is neither a known name nor an existing folder or file.\n"
                f"Known image sets:\n{known}"
            )
    image_set.max_pixels = max_pixels
    return subsample(image_set, max_images, seed=seed)

"""Image sets from IDX files (the MNIST / Fashion-MNIST format).

The IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/): a 4-byte
magic number ``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian ``uint32``
dimensions, then the data in C order. We read unsigned-byte data (type
``0x08``): images with magic ``0x00000803`` (``[N, H, W]``) or ``0x00000804``
(``[N, H, W, C]``, ``C`` in 1 or 3), labels with magic ``0x00000801``
(``[N]``). Files may be gzip-compressed (detected from their content, not the
name).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from sae_audit.data.base import DEFAULT_MAX_PIXELS, ImageSet, check_max_pixels
from sae_audit.errors import SaeAuditError
from sae_audit.safe_files import check_regular, gunzip_bytes, open_regular, printable

__all__ = ["MAX_IDX_GZIP_BYTES", "IdxSet", "read_idx"]

_GZIP_MAGIC = b"\x1f\x8b"
#: Largest decompressed size of a gzip-compressed IDX file (2 GiB), which is decompressed into
#: memory; Fashion-MNIST's training images are 47 MB. Raw (uncompressed) files are memory-mapped
#: and have no such cap.
MAX_IDX_GZIP_BYTES = 2 << 30


def _read_bytes(path: Path) -> bytes | np.ndarray:
    """The decompressed content of ``path`` (a read-only memmap for raw files).

    Raises:
        SaeAuditError: not a regular file; a gzip file that is corrupt,
            truncated, or expands past :data:`MAX_IDX_GZIP_BYTES`.
    """
    with open_regular(path, "IDX file") as f:
        head = f.read(2)
        if head == _GZIP_MAGIC:
            data = head + f.read(MAX_IDX_GZIP_BYTES + 1)
            return gunzip_bytes(data, MAX_IDX_GZIP_BYTES, f"IDX file {printable(path)!r}")
        if os.fstat(f.fileno()).st_size == 0:
            return b""
        return np.memmap(f, dtype=np.uint8, mode="r")


def read_idx(path: str | os.PathLike[str], expect_ndim: Sequence[int] | None = None) -> np.ndarray:
    """Read one unsigned-byte IDX file.

    Args:
        path: the file, raw or gzip-compressed.
        expect_ndim: allowed numbers of dimensions (e.g. ``(3, 4)`` for images,
            ``(1,)`` for labels); ``None`` accepts any.

    Returns:
        A read-only ``uint8`` array of the header's shape. It views the
        decompressed bytes (gzip) or a memory map of the file (raw), so no copy
        of the data is made.

    Raises:
        SaeAuditError: the file is missing, is not an IDX file, holds a type
            other than unsigned bytes, has an unexpected number of dimensions,
            or its size does not match its header (truncated or corrupt).
    """
    p = Path(path).expanduser()
    if not os.path.lexists(p):
        raise SaeAuditError(f"IDX file {printable(path)!r} does not exist")
    check_regular(p, "IDX file")
    buf = _read_bytes(p)
    raw = np.frombuffer(buf, dtype=np.uint8) if isinstance(buf, bytes) else buf
    if raw.size < 4:
        raise SaeAuditError(f"{str(p)!r} is too short to be an IDX file ({raw.size} bytes)")
    b0, b1, dtype_code, ndim = (int(x) for x in raw[:4])
    if b0 != 0 or b1 != 0:
        raise SaeAuditError(
            f"{str(p)!r} is not an IDX file (magic number {bytes(raw[:4]).hex()} "
            "should start with 0000)"
        )
    if dtype_code != 0x08:
        raise SaeAuditError(
            f"IDX file {str(p)!r} holds data type 0x{dtype_code:02x}; only unsigned bytes "
            "(0x08) are supported"
        )
    if expect_ndim is not None and ndim not in expect_ndim:
        raise SaeAuditError(
            f"IDX file {str(p)!r} has {ndim} dimensions (magic 0x{0x800 + ndim:08x}); "
            f"expected {' or '.join(str(d) for d in expect_ndim)}"
        )
    header = 4 + 4 * ndim
    if raw.size < header:
        raise SaeAuditError(f"IDX file {str(p)!r} is truncated inside its header")
    dims = tuple(int(d) for d in np.frombuffer(bytes(raw[4:header]), dtype=">u4"))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if raw.size != expected:
        what = "truncated" if raw.size < expected else "longer than its header says"
        raise SaeAuditError(
            f"IDX file {str(p)!r} is {what}: header shape {dims} needs {expected} bytes, "
            f"file has {raw.size} (decompressed); the file is corrupt, copy it again"
        )
    return raw[header:].reshape(dims)


class IdxSet(ImageSet):
    """Images (and optional labels) from IDX files.

    Args:
        images_path: IDX images file (``[N, H, W]`` or ``[N, H, W, C]``
            unsigned bytes), raw or ``.gz``.
        labels_path: IDX labels file (``[N]`` unsigned bytes), or ``None`` for
            an unlabeled set.
        classes: class names, indexed by label value; ``None`` leaves them
            unnamed (labels are still returned).
        name: the set's name (default: the images file name).
        max_pixels: the most pixels an image may have (``H * W``); ``None``
            for no cap.

    ``load(i)`` returns an ``RGB`` image of size ``W x H`` (grey replicated to
    three channels).

    Raises:
        SaeAuditError: a file is missing, not a regular file, corrupt or
            truncated (see :func:`read_idx`); the label count differs from the
            image count; a label is outside ``range(len(classes))``; the images
            are larger than ``max_pixels``.
    """

    def __init__(
        self,
        images_path: str | os.PathLike[str],
        labels_path: str | os.PathLike[str] | None = None,
        classes: Sequence[str] | None = None,
        *,
        name: str | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.max_pixels = check_max_pixels(max_pixels)
        self.images_path = Path(images_path).expanduser()
        self.labels_path = Path(labels_path).expanduser() if labels_path is not None else None
        self._images = read_idx(self.images_path, expect_ndim=(3, 4))
        height, width = (int(d) for d in self._images.shape[1:3])
        if self.max_pixels is not None and height * width > self.max_pixels:
            raise SaeAuditError(
                f"IDX images {printable(self.images_path)!r} are {width}x{height} = {width * height:,} pixels each, "
                f"over the {self.max_pixels:,}-pixel cap (max_pixels); raise max_pixels if that is intended"
            )
        if self._images.ndim == 4 and self._images.shape[3] not in (1, 3):
            raise SaeAuditError(
                f"IDX images {str(self.images_path)!r} have {self._images.shape[3]} channels; "
                "expected 1 or 3"
            )
        self._labels: np.ndarray | None = None
        if self.labels_path is not None:
            labels = read_idx(self.labels_path, expect_ndim=(1,))
            if len(labels) != len(self._images):
                raise SaeAuditError(
                    f"{str(self.labels_path)!r} has {len(labels)} labels but "
                    f"{str(self.images_path)!r} has {len(self._images)} images"
                )
            self._labels = labels
        self.classes = list(classes) if classes is not None else None
        if self.classes is not None and self._labels is not None and len(self._labels):
            top = int(self._labels.max())
            if top >= len(self.classes):
                raise SaeAuditError(
                    f"label {top} in {str(self.labels_path)!r} has no class name "
                    f"(only {len(self.classes)} classes given)"
                )
        self.name = name or printable(self.images_path.name)
        self.source = printable(self.images_path)

    def __len__(self) -> int:
        return int(self._images.shape[0])

    @property
    def image_shape(self) -> tuple[int, ...]:
        """``(H, W)`` or ``(H, W, C)`` of every image."""
        return tuple(self._images.shape[1:])

    def array(self, i: int) -> np.ndarray:
        """Raw ``uint8`` pixels of image ``i``, shape :attr:`image_shape`."""
        self._check_index(i)
        return self._images[i]

    def label(self, i: int) -> int:
        self._check_index(i)
        return -1 if self._labels is None else int(self._labels[i])

    def labels(self) -> np.ndarray:
        """All labels as an ``int64`` array ``[N]`` (``-1`` everywhere if unlabeled)."""
        if self._labels is None:
            return np.full(len(self), -1, dtype=np.int64)
        return self._labels.astype(np.int64)

    def item_id(self, i: int) -> str:
        self._check_index(i)
        return f"{printable(self.images_path.name)}#{i}"

    def _open(self, i: int) -> Image.Image:
        a = np.ascontiguousarray(self._images[i])
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[:, :, 0]
        return Image.fromarray(a, "L" if a.ndim == 2 else "RGB")

    def describe(self) -> dict:
        d = super().describe()
        d["labels"] = str(self.labels_path) if self.labels_path is not None else None
        return d

    def content_files(self) -> list[Path]:
        """The IDX images file and its labels file: their bytes identify the set."""
        return [p for p in (self.images_path, self.labels_path) if p is not None]

"""Batching an image set through a caller-supplied preprocessing function."""

from __future__ import annotations

import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from PIL import Image

from sae_audit.data.base import ImageSet, UnreadableImageError
from sae_audit.errors import SaeAuditError

__all__ = ["Batch", "BatchIterator", "Preprocess", "iter_batches"]

#: ``preprocess(images) -> pixel_values``: a list of ``B`` RGB PIL images to a
#: tensor whose first dimension is ``B`` (e.g. ``[B, 3, H, W]`` float32).
Preprocess = Callable[[list[Image.Image]], torch.Tensor]


@dataclass(frozen=True)
class Batch:
    """One batch of decoded, preprocessed images.

    Attributes:
        pixel_values: what ``preprocess`` returned, first dimension ``B``.
        labels: ``int64 [B]``, the set's labels (``-1`` for unlabeled).
        indices: ``int64 [B]``, the images' indices in the image set.
    """

    pixel_values: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor

    def __len__(self) -> int:
        return int(self.indices.shape[0])


class BatchIterator:
    """Iterable over :class:`Batch` es of an image set, recording skipped images.

    Iterate it (once or several times; each pass starts over and resets the
    counters), then read:

    Attributes:
        skipped: ``(item_id, reason)`` for each image that could not be
            decoded in the last pass (``item_id`` is a path relative to the
            folder root, or ``file#index``).
        n_seen: images attempted so far in the current/last pass.
        n_ok: images decoded and yielded so far.

    Every batch except possibly the last holds exactly ``batch_size`` images:
    unreadable images are replaced by the next readable ones.

    Raises (while iterating):
        UnreadableImageError: ``strict=True`` and an image cannot be decoded
            (a :class:`SaeAuditError` naming the file).
        SaeAuditError: every image of the set was unreadable.
    """

    def __init__(
        self,
        image_set: ImageSet,
        preprocess: Preprocess,
        batch_size: int,
        *,
        strict: bool = False,
        progress: str | None = None,
        num_workers: int = 0,
        workers: str = "threads",
    ) -> None:
        if int(batch_size) < 1:
            raise SaeAuditError(f"batch_size must be at least 1, got {batch_size}")
        if num_workers < 0:
            raise SaeAuditError(f"num_workers must be 0 or more, got {num_workers}")
        if workers not in ("threads", "processes"):
            raise SaeAuditError(f"workers must be 'threads' or 'processes', got {workers!r}")
        if len(image_set) == 0:
            raise SaeAuditError(f"image set {image_set.name!r} is empty")
        self.image_set = image_set
        self.preprocess = preprocess
        self.batch_size = int(batch_size)
        self.strict = strict
        self.progress = progress
        self.num_workers = int(num_workers)
        self.workers = workers
        self.skipped: list[tuple[str, str]] = []
        self.n_seen = 0
        self.n_ok = 0

    def __len__(self) -> int:
        """Number of batches if no image is skipped (an upper bound)."""
        return -(-len(self.image_set) // self.batch_size)

    def _decoded(self) -> Iterator[tuple[int, Image.Image | UnreadableImageError]]:
        """``(index, image or error)`` for every index, in order."""
        n = len(self.image_set)

        def load(i: int) -> Image.Image | UnreadableImageError:
            try:
                return self.image_set.load(i)
            except UnreadableImageError as exc:
                return exc

        if self.num_workers == 0:
            for i in range(n):
                yield i, load(i)
            return
        if self.workers == "processes":
            yield from self._decoded_by_processes()
            return
        window = max(2 * self.batch_size, 4 * self.num_workers)
        with ThreadPoolExecutor(self.num_workers, thread_name_prefix="sae-audit-decode") as pool:
            pending: deque[tuple[int, Future]] = deque()
            next_i = 0
            try:
                while next_i < n or pending:
                    while next_i < n and len(pending) < window:
                        pending.append((next_i, pool.submit(load, next_i)))
                        next_i += 1
                    i, fut = pending.popleft()
                    yield i, fut.result()
            finally:
                for _, fut in pending:
                    fut.cancel()

    def _decoded_by_processes(self) -> Iterator[tuple[int, Image.Image | UnreadableImageError]]:
        """``(index, image or error)`` in order, decoded by ``num_workers`` processes of torch's ``DataLoader``.

        Each worker decodes whole images (:meth:`ImageSet.load`) and sends the 8-bit
        RGB array back through shared memory; order is kept (``in_order``).
        """
        from torch.utils.data import DataLoader

        loader = DataLoader(_DecodeDataset(self.image_set), batch_size=None, num_workers=self.num_workers,
                            prefetch_factor=max(2, -(-2 * self.batch_size // self.num_workers)),
                            collate_fn=_keep)
        for i, array, error in loader:
            if error is not None:
                yield i, UnreadableImageError(*error)
            else:
                yield i, Image.fromarray(array.numpy() if isinstance(array, torch.Tensor) else array, "RGB")

    def __iter__(self) -> Iterator[Batch]:
        self.skipped = []
        self.n_seen = 0
        self.n_ok = 0
        bar = None
        if self.progress is not None:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=len(self.image_set), desc=self.progress, unit="img", file=sys.stderr, disable=None
            )
        images: list[Image.Image] = []
        labels: list[int] = []
        indices: list[int] = []
        try:
            for i, result in self._decoded():
                self.n_seen += 1
                if bar is not None:
                    bar.update(1)
                if isinstance(result, UnreadableImageError):
                    if self.strict:
                        raise result
                    self.skipped.append((result.item_id, result.reason))
                    if bar is not None:
                        bar.set_postfix(skipped=len(self.skipped), refresh=False)
                    continue
                images.append(result)
                labels.append(self.image_set.label(i))
                indices.append(i)
                if len(images) == self.batch_size:
                    yield self._make(images, labels, indices)
                    images, labels, indices = [], [], []
            if images:
                yield self._make(images, labels, indices)
        finally:
            if bar is not None:
                bar.close()
        if self.n_ok == 0:
            first = self.skipped[0] if self.skipped else ("?", "?")
            raise SaeAuditError(
                f"none of the {self.n_seen} images in image set {self.image_set.name!r} could be "
                f"read (first: {first[0]!r}: {first[1]})"
            )

    def _make(self, images: list[Image.Image], labels: list[int], indices: list[int]) -> Batch:
        pixel_values = self.preprocess(images)
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.shape[0] != len(images):
            got = (
                f"a tensor of shape {tuple(pixel_values.shape)}"
                if isinstance(pixel_values, torch.Tensor)
                else type(pixel_values).__name__
            )
            raise TypeError(
                f"preprocess must return a tensor with first dimension {len(images)}, got {got}"
            )
        self.n_ok += len(images)
        return Batch(
            pixel_values=pixel_values,
            labels=torch.tensor(labels, dtype=torch.long),
            indices=torch.tensor(indices, dtype=torch.long),
        )


def _keep(item):
    """DataLoader collate for one item: the decoded array as a tensor (shared memory), the rest as is."""
    i, array, error = item
    return i, (torch.from_numpy(array) if array is not None else None), error


class _DecodeDataset(torch.utils.data.Dataset):
    """Image ``i`` of a set as ``(i, uint8 array [H, W, 3] or None, (item_id, reason) or None)``."""

    def __init__(self, image_set: ImageSet):
        self.image_set = image_set

    def __len__(self) -> int:
        return len(self.image_set)

    def __getitem__(self, i: int):
        import numpy as np

        try:
            return i, np.array(self.image_set.load(i)), None
        except UnreadableImageError as exc:
            return i, None, (exc.item_id, exc.reason)


def iter_batches(
    image_set: ImageSet,
    preprocess: Preprocess,
    batch_size: int,
    strict: bool = False,
    progress: str | None = None,
    *,
    num_workers: int = 0,
    workers: str = "threads",
) -> BatchIterator:
    """Decode ``image_set`` in order and yield preprocessed :class:`Batch` es.

    Args:
        image_set: the images (decoded by ``image_set.load`` to 8-bit RGB).
        preprocess: ``list[PIL.Image] -> Tensor`` with first dimension ``B``
            (typically the model's image processor, returning
            ``pixel_values [B, 3, H, W]`` float32).
        batch_size: images per batch (the last batch may be smaller).
        strict: raise on the first unreadable image instead of skipping it.
        progress: a label for a tqdm progress bar on stderr (shown only on a
            terminal); ``None`` for no bar.
        num_workers: decode images in this many background workers (order is
            kept); ``0`` decodes in the calling thread.
        workers: ``threads`` (a thread pool; Pillow releases the GIL while it
            decodes) or ``processes`` (torch's ``DataLoader`` worker processes,
            arrays back through shared memory). ``benchmarks/loader_speed.py``
            measures both against decoding in the calling thread.

    Returns:
        A :class:`BatchIterator`: iterate it for batches, then read
        ``.skipped`` (``[(item_id, reason)]``), ``.n_seen`` and ``.n_ok``.

    Raises:
        SaeAuditError: the set is empty, or ``batch_size < 1`` (at once); every
            image unreadable (at the end of iteration).
        UnreadableImageError: ``strict=True`` and an image cannot be decoded
            (during iteration).
    """
    return BatchIterator(
        image_set, preprocess, batch_size, strict=strict, progress=progress, num_workers=num_workers,
        workers=workers)

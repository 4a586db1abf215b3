"""Streaming activations out of a vision model, shuffled through a bounded buffer."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from sae_audit.models import HookPoint, VisionModel, capture, select_tokens


def image_activations(
    vm: VisionModel,
    hook_point: HookPoint,
    batches: Iterable,
) -> Iterator[torch.Tensor]:
    """Activations ``[n_tokens, d_model]`` (float32, CPU) for each image batch.

    ``batches`` yields objects with a ``pixel_values`` tensor (see
    :func:`sae_audit.data.iter_batches`). Tokens are selected by
    ``hook_point.tokens`` and flattened over images.
    """
    for batch in batches:
        acts = capture(vm, batch.pixel_values, [hook_point])[hook_point.name]
        sel = select_tokens(acts, hook_point.tokens, vm.layout)
        yield sel.reshape(-1, sel.shape[-1]).float().cpu()


def shuffled_batches(
    chunks: Iterable[torch.Tensor],
    batch_size: int,
    buffer_size: int = 65_536,
    max_vectors: int | None = None,
    seed: int = 0,
) -> Iterator[torch.Tensor]:
    """Re-batch a stream of ``[n, d]`` chunks into shuffled ``[batch_size, d]`` batches.

    Vectors are gathered into a buffer of at most ``buffer_size + chunk`` rows;
    when it is full it is permuted and all whole batches are emitted, the
    remainder carried over. Memory is bounded by the buffer, never by the
    dataset. Stops after ``max_vectors`` vectors when given (the last batch may
    be smaller); the final partial buffer is emitted too.
    """
    gen = torch.Generator().manual_seed(seed)
    buf: list[torch.Tensor] = []
    n_buf = 0
    emitted = 0

    def drain(final: bool) -> Iterator[torch.Tensor]:
        nonlocal buf, n_buf, emitted
        data = torch.cat(buf) if len(buf) > 1 else buf[0]
        data = data[torch.randperm(data.shape[0], generator=gen)]
        n_whole = data.shape[0] if final else (data.shape[0] // batch_size) * batch_size
        for start in range(0, n_whole, batch_size):
            batch = data[start : start + batch_size]
            if max_vectors is not None:
                batch = batch[: max_vectors - emitted]
            if batch.shape[0] == 0:
                return
            emitted += batch.shape[0]
            yield batch
        rest = data[n_whole:]
        buf, n_buf = ([rest] if rest.shape[0] else []), rest.shape[0]

    for chunk in chunks:
        buf.append(chunk)
        n_buf += chunk.shape[0]
        if n_buf >= buffer_size:
            yield from drain(final=False)
            if max_vectors is not None and emitted >= max_vectors:
                return
    if n_buf:
        yield from drain(final=True)

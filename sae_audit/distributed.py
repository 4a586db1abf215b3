"""Several processes under ``torchrun``: the process group, each rank's device and share, and the collectives.

``torchrun --nproc_per_node N sae-audit run|cache|train ...`` starts N copies of
the command with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR``/
``MASTER_PORT``) in their environment. :func:`init_from_environment` (called by
the command line) joins PyTorch's process group (``torch.distributed``: nccl
when the rank has a CUDA device, gloo on CPU); without those variables nothing
happens and every function here behaves as for one process (world size 1, no
collective, no process group).

Merging: the audit's accumulators have exact ``merge`` methods, so the
simplest exact route is used: every rank's accumulator is pickled and
all-gathered (:func:`all_gather`, ``torch.distributed.all_gather_object``) and
each rank merges them in rank order, so every rank holds the same merged state
and the same results (only rank 0 writes them). Every collective here is also
an error check (:func:`together`, :func:`gather_outcome`): when one rank raises,
every rank raises at the same synchronisation point instead of waiting on a
collective the failed rank never reaches; a process-group timeout
(``SAE_AUDIT_DIST_TIMEOUT`` seconds, default 1800) ends any wait that remains.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from sae_audit.errors import SaeAuditError

__all__ = ["World", "PeerFailed", "world", "init_from_environment", "shutdown", "is_main", "share", "all_gather",
           "all_reduce", "broadcast", "together", "gather_outcome", "gather_stream", "local_device",
           "restarted"]


@dataclass(frozen=True)
class World:
    """Where this process stands: ``rank`` of ``world_size`` (``local_rank`` on its machine), ``backend``
    (``"gloo"``, ``"nccl"``, or ``None`` for one process without a process group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def to_json(self) -> dict:
        return {"world_size": self.world_size, "backend": self.backend}


class PeerFailed(RuntimeError):
    """Another rank failed with an internal error (its traceback is in the message)."""


_WORLD = World()


def world() -> World:
    """This process's :class:`World` (world size 1 unless :func:`init_from_environment` joined a group)."""
    return _WORLD


def is_main() -> bool:
    """Whether this is rank 0 (always, for one process): the rank that prints, shows progress and writes."""
    return _WORLD.rank == 0


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise SaeAuditError(f"the environment variable {name}={value!r} is not a whole number") from None


def init_from_environment(timeout_s: float | None = None) -> World:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); the :class:`World`.

    Without ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) nothing happens. The backend is
    nccl when CUDA is available (each rank uses ``cuda:LOCAL_RANK``), gloo otherwise.
    ``timeout_s`` (default ``SAE_AUDIT_DIST_TIMEOUT`` or 1800 s) bounds every
    collective's wait. Calling it again returns the world already joined.

    Raises:
        SaeAuditError: a variable is malformed, or ``LOCAL_RANK`` names a GPU that is not there.
    """
    global _WORLD
    import torch.distributed as dist

    if _WORLD.active:
        return _WORLD
    size = _env_int("WORLD_SIZE")
    if size is None or size <= 1:
        return _WORLD
    rank, local = _env_int("RANK") or 0, _env_int("LOCAL_RANK") or 0
    backend = "gloo"
    if torch.cuda.is_available():
        if local >= torch.cuda.device_count():
            raise SaeAuditError(f"LOCAL_RANK {local} but this machine has {torch.cuda.device_count()} GPU(s); start "
                                "at most that many processes per node")
        torch.cuda.set_device(local)
        backend = "nccl"
    if timeout_s is None:
        timeout_s = float(os.environ.get("SAE_AUDIT_DIST_TIMEOUT", "1800"))
    if not dist.is_initialized():
        timeout = timedelta(seconds=timeout_s)
        # torchrun's store outlives a restart (--max-restarts): keys of this attempt get their own prefix, or the
        # restarted ranks would read the dead ranks' addresses and fail to connect.
        store, _, _ = next(dist.rendezvous("env://", rank, size, timeout=timeout))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(backend, store=dist.PrefixStore(f"sae-audit/attempt-{attempt}", store), rank=rank,
                                world_size=size, timeout=timeout)
    _WORLD = World(rank, size, local, backend)
    return _WORLD


def shutdown() -> None:
    """Leave the process group (a no-op for one process)."""
    global _WORLD
    import torch.distributed as dist

    if _WORLD.active and dist.is_initialized():
        dist.destroy_process_group()
    _WORLD = World()


def restarted() -> bool:
    """Whether torchrun restarted this worker after a failure (``TORCHELASTIC_RESTART_COUNT`` > 0, with
    ``--max-restarts``): resumable commands then continue from their checkpoint."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    except ValueError:
        return False


def local_device() -> torch.device | None:
    """``cuda:LOCAL_RANK`` under torchrun on a machine with GPUs; ``None`` otherwise (the usual choice applies)."""
    if _WORLD.active and _WORLD.backend == "nccl":
        return torch.device("cuda", _WORLD.local_rank)
    return None


def share(n: int, rank: int | None = None, world_size: int | None = None) -> range:
    """The indices ``0..n-1`` this rank reads: contiguous block ``rank`` of ``world_size`` near-equal blocks.

    Blocks in rank order concatenate to ``range(n)``, so merging per-rank
    states in rank order visits items in the one-process order.
    """
    rank = _WORLD.rank if rank is None else rank
    size = _WORLD.world_size if world_size is None else world_size
    return range(rank * n // size, (rank + 1) * n // size)


def all_gather(obj: Any) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` for one process); objects are pickled."""
    if not _WORLD.active:
        return [obj]
    import torch.distributed as dist

    out: list = [None] * _WORLD.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce ``tensor`` in place across ranks (``op``: ``sum`` or ``max``); returns it. A no-op for one process."""
    if _WORLD.active:
        import torch.distributed as dist

        dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return tensor


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``tensor`` in place with rank ``src``'s; returns it. A no-op for one process."""
    if _WORLD.active:
        import torch.distributed as dist

        dist.broadcast(tensor, src)
    return tensor


def _failure(exc: BaseException) -> tuple:
    if isinstance(exc, SaeAuditError):
        return ("user", str(exc), getattr(exc, "field", None))
    if isinstance(exc, KeyboardInterrupt):
        return ("interrupt", "interrupted", None)
    return ("internal", "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), None)


def _raise_first(failures: list) -> None:
    """Raise, on a rank that did not fail itself, the first other rank's failure."""
    for rank, f in enumerate(failures):
        if f is None:
            continue
        kind, message, field = f
        if kind == "user":
            raise SaeAuditError(f"(rank {rank}) {message}", field=field)
        if kind == "interrupt":
            raise KeyboardInterrupt
        raise PeerFailed(f"rank {rank} failed:\n{message}")


def gather_outcome(fn: Callable[[], Any]) -> list:
    """Run ``fn()`` on every rank and all-gather the results: ``[result of rank 0, ...]``.

    One synchronisation point that is also an error check: when ``fn`` raises on
    any rank, every rank raises (its own exception where it failed, otherwise
    the first failed rank's: a :class:`SaeAuditError` for a user error, else
    :class:`PeerFailed`). For one process: ``[fn()]``.
    """
    if not _WORLD.active:
        return [fn()]
    try:
        result = fn()
    except BaseException as exc:
        all_gather(("failed", _failure(exc)))
        raise
    got = all_gather(("ok", result))
    _raise_first([f if kind == "failed" else None for kind, f in got])
    return [r for _, r in got]


@contextmanager
def together() -> Iterator[None]:
    """A block every rank runs; on leaving it, every rank learns whether any rank raised in it, and all raise.

    Use it where ranks may fail differently (files, folders, start-up) before the
    next collective, so no rank waits on one that has left.
    """
    if not _WORLD.active:
        yield
        return
    try:
        yield
    except BaseException as exc:
        all_gather(_failure(exc))
        raise
    _raise_first(all_gather(None))


def gather_stream(items: Iterable) -> Iterator:
    """Every rank's ``items`` on every rank: round ``j`` yields rank 0's ``j``-th item, then rank 1's, ...

    Ranks whose items run out take part with nothing until every rank's have; an
    error on any rank while producing an item raises on every rank
    (:func:`gather_outcome`). Every rank must consume the stream to the same
    point (it is the same stream on every rank). For one process: ``items``.
    """
    if not _WORLD.active:
        yield from items
        return
    it = iter(items)
    done = False

    def one():
        return None if done else next(it, None)

    while True:
        got = gather_outcome(one)
        done = done or got[_WORLD.rank] is None
        if all(g is None for g in got):
            return
        yield from (g for g in got if g is not None)

"""Resumable training checkpoints for :func:`sae_audit.train.train_saes`.

A checkpoint folder holds one file, ``state.pt``, written with ``torch.save``
under a temporary name and renamed over the previous one (so a kill during a
save leaves the previous checkpoint intact). It contains, for every SAE of the
run: its config, parameters, the dead-latent counters (tokens since each latent
last fired, :class:`~sae_audit.train.objective.TopKObjective`'s
``tokens_since_fired``), the Adam state and the running training NMSE; plus the
step, the vectors seen and the :class:`~sae_audit.train.trainer.TrainConfig`. It holds
only tensors, numbers, strings and dicts, and is read back with
``torch.load(weights_only=True)``, so nothing is unpickled with code execution.
"""

from __future__ import annotations

import errno
import os
import pickle
from pathlib import Path

import torch

from sae_audit import distributed
from sae_audit.errors import SaeAuditError

STATE_NAME = "state.pt"
CHECKPOINT_SCHEMA_VERSION = 1


def save_checkpoint(folder, runs, train, step: int, vectors: int, name: str = STATE_NAME) -> Path:
    """Write the state of every run in ``runs`` after ``step`` steps (atomically) to ``folder/name``
    (under torchrun with the SAEs placed on ranks, each rank writes its own, :func:`rank_state_name`).

    Raises:
        SaeAuditError: the disk is full or the folder is not writable (the previous
            checkpoint is kept).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "schema_version": CHECKPOINT_SCHEMA_VERSION,
        "step": int(step),
        "vectors": int(vectors),
        "train": train.to_dict(),
        "world_size": distributed.world().world_size,
        "runs": [
            {
                "config": run.sae.config.to_dict(),
                "params": {k: v.detach().cpu() for k, v in run.sae.state_dict().items()},
                "tokens_since_fired": run.objective.tokens_since_fired.detach().cpu(),
                "optimizer": run.opt.state_dict(),
                "nmse_ema": float(run.nmse_ema) if run.nmse_ema is not None else None,
            }
            for run in runs
        ],
    }
    final = folder / name
    tmp = folder / (name + ".tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, final)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        why = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else str(exc)
        raise SaeAuditError(f"could not write the training checkpoint {final}: {why}") from None
    return final


def rank_state_name(rank: int) -> str:
    """The checkpoint file of ``rank`` when each rank trains its own SAEs (rank 0's is ``state.pt``)."""
    return STATE_NAME if rank == 0 else f"state-rank{rank:03d}.pt"


def load_checkpoint(folder, runs, train, name: str = STATE_NAME) -> tuple[int, int]:
    """Restore ``runs`` (built from the same configs) from ``folder``; return ``(step, vectors)``.

    Raises:
        SaeAuditError: no checkpoint, an unreadable one, or one written by a run
            with other SAE configs or training settings.
    """
    path = Path(folder) / name
    if not path.is_file():
        raise SaeAuditError(f"no training checkpoint to resume from in {Path(folder)}; start without `resume`",
                            field="resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as exc:
        raise SaeAuditError(f"{path} is not a readable sae-audit checkpoint ({exc})") from None
    if not isinstance(state, dict) or state.get("schema_version") != CHECKPOINT_SCHEMA_VERSION:
        raise SaeAuditError(f"{path} is not an sae-audit checkpoint of schema {CHECKPOINT_SCHEMA_VERSION}")
    try:
        return _restore(state, folder, runs, train)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
        raise SaeAuditError(f"{path} is not a complete sae-audit checkpoint ({type(exc).__name__}: {exc}); "
                            "start afresh with `overwrite`") from None


def _restore(state: dict, folder, runs, train) -> tuple[int, int]:
    saved_train = dict(state["train"])
    now = train.to_dict()
    # The checkpoint interval may change between runs; everything else must match.
    diff = sorted(k for k in now if k != "checkpoint_every" and saved_train.get(k) != now[k])
    if diff:
        raise SaeAuditError(
            f"cannot resume: the checkpoint in {Path(folder)} was written with other training settings "
            f"({', '.join(diff)}); rerun with the same options or start afresh with `overwrite`"
        )
    size, saved_size = distributed.world().world_size, int(state.get("world_size", 1))
    if saved_size != size:
        raise SaeAuditError(f"cannot resume: the checkpoint in {Path(folder)} was written by {saved_size} "
                            f"process(es) and this run has {size}; resume with the same number of processes "
                            "(torchrun --nproc_per_node and --nnodes) or start afresh with `overwrite`")
    if len(state["runs"]) != len(runs):
        raise SaeAuditError(
            f"cannot resume: the checkpoint holds {len(state['runs'])} SAEs, this run trains {len(runs)}"
        )
    for run, saved in zip(runs, state["runs"]):
        mine = run.sae.config.to_dict()
        theirs = dict(saved["config"])
        mine.pop("norm_scale"), theirs.pop("norm_scale", None)
        if "init_seed" not in theirs:  # written before configs recorded it; the weights come from the file
            mine.pop("init_seed", None)
        if mine != theirs:
            raise SaeAuditError("cannot resume: the checkpoint was written for other SAE configs (k, lambda, width)")
        run.sae.load_state_dict(saved["params"])
        run.objective.tokens_since_fired.copy_(saved["tokens_since_fired"])
        run.opt.load_state_dict(saved["optimizer"])
        run.nmse_ema = saved["nmse_ema"]
    return int(state["step"]), int(state["vectors"])

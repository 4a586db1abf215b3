"""An on-disk activation cache: write once (resumably), read shuffled many times.

Layout of a cache folder (``CACHE_SCHEMA_VERSION`` in ``meta.json``)::

    CACHE_DIR/
      meta.json                  what the rows are and how far writing got (see below)
      shard-00000.safetensors    one tensor "activations" [rows, d_in] in the cache dtype
      shard-00001.safetensors
      ...

``meta.json`` records ``model``, ``model_revision``, ``hook_point``, ``tokens``,
``image_size``, ``dtype``, ``d_in``, the image set (``data``: its ``describe()``
dict plus the ``max_images``/``seed`` that chose it), ``rows`` (total rows in
the listed shards), ``images_done`` (images of the set consumed so far),
``shards`` (file name, rows, and the half-open range of image indices each
holds) and ``complete``.

Under torchrun (:mod:`sae_audit.distributed`) rank ``r`` of ``W`` writes its share
of the images as ``shard-rRRR-NNNNN.safetensors`` with its own progress record
``meta.rank-RRR-of-WWW.json`` (the same keys, for its share); rank 0 merges the
records into ``meta.json`` at the end (:func:`_cache_by_ranks`).

Crash safety: every shard holds the activations of a whole number of images
and is written under a ``.tmp`` name and renamed; ``meta.json`` is rewritten
(also temp-then-rename) *after* each shard lands. A shard that is on disk but
not listed in ``meta.json`` (a kill between the two renames) is deleted on
resume and its images are redone, so rows are never duplicated or lost. A
write that fails (a full disk) removes its temporary file and raises
:class:`~sae_audit.errors.SaeAuditError`; the shards already listed stay valid.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from sae_audit import distributed
from sae_audit.errors import SaeAuditError

CACHE_SCHEMA_VERSION = 1
CACHE_FORMAT = "sae-audit-activations"
META_NAME = "meta.json"
TENSOR_NAME = "activations"
CACHE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_SHARD_RE = re.compile(r"^shard-(r\d{3,}-)?(\d{5,})\.safetensors$")
#: Under torchrun, each rank's progress record (merged into ``meta.json`` by rank 0 at the end).
_RECORD_RE = re.compile(r"^meta\.rank-(\d{3,})-of-(\d{3,})\.json$")

#: Keys of ``meta.json`` that must match for a resumed run to continue a cache.
IDENTITY_KEYS = ("model", "model_revision", "hook_point", "tokens", "image_size", "dtype", "d_in", "data")


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _disk_error(path, exc) from None


def _disk_error(path: Path, exc: OSError) -> SaeAuditError:
    what = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else f"writing failed ({exc})"
    return SaeAuditError(
        f"could not write {path}: {what}. Nothing half-written was kept; free some space and rerun "
        "the same command resuming (`resume`) to continue"
    )


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


def _read_meta(folder: Path) -> dict[str, Any]:
    path = folder / META_NAME
    if not path.is_file():
        raise SaeAuditError(f"{folder} is not an activation cache (no {META_NAME}); write one with `sae-audit cache`")
    try:
        meta = json.loads(path.read_text())
    except ValueError as exc:
        raise SaeAuditError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
        raise SaeAuditError(f"{path} does not describe an sae-audit activation cache")
    version = meta.get("schema_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise SaeAuditError(f"{path}: schema_version must be an integer, got {version!r}; rebuild the cache")
    if version > CACHE_SCHEMA_VERSION:
        raise SaeAuditError(
            f"{path} has schema_version {meta['schema_version']}, newer than this sae-audit reads "
            f"({CACHE_SCHEMA_VERSION}); upgrade sae-audit"
        )
    missing = [k for k in (*IDENTITY_KEYS, "rows", "shards", "complete", "images_done") if k not in meta]
    if missing:
        raise SaeAuditError(f"{path} lacks keys: {', '.join(missing)}")
    return meta


def _shard_rows(path: Path, d_in: int, dtype: str) -> int:
    """Rows of one shard, checking its tensor's name, width and dtype (reads the header only)."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            if list(fh.keys()) != [TENSOR_NAME]:
                raise SaeAuditError(f"{path}: expected one tensor named {TENSOR_NAME!r}")
            sl = fh.get_slice(TENSOR_NAME)
            shape, st_dtype = sl.get_shape(), sl.get_dtype()
    except (SafetensorError, OSError) as exc:
        raise SaeAuditError(f"{path} is not a readable safetensors shard ({exc})") from None
    expected_dtype = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}[dtype]
    if len(shape) != 2 or shape[1] != d_in or st_dtype != expected_dtype:
        raise SaeAuditError(f"{path}: tensor is {st_dtype} {shape}, the cache says {dtype} [rows, {d_in}]")
    return int(shape[0])


def cache_activations(
    vm,
    hook_point,
    image_set,
    out_dir: str | os.PathLike,
    *,
    shard_rows: int = 32_768,
    dtype: str = "float32",
    batch_size: int = 32,
    resume: bool = False,
    overwrite: bool = False,
    strict: bool = False,
    data_spec: dict[str, Any] | None = None,
    progress: bool = True,
) -> Path:
    """Capture ``hook_point`` activations of every image of ``image_set`` into a cache folder.

    Args:
        vm: a :class:`~sae_audit.models.VisionModel`.
        hook_point: a :class:`~sae_audit.models.HookPoint` (its token set decides the rows:
            ``patch`` gives ``n_patches`` rows per image, ``cls``/``mean`` one).
        image_set: the images, read in index order.
        out_dir: the cache folder.
        shard_rows: a shard is flushed once it holds at least this many rows
            (it always ends at an image boundary).
        dtype: storage dtype, ``float32``, ``float16`` or ``bfloat16``; reading
            returns float32.
        resume: continue an interrupted cache with the same identity (model,
            revision, hook point, token set, resolution, dtype, image set).
        overwrite: replace an existing folder.
        data_spec: extra JSON-able facts about the image set recorded in ``meta.json``
            (e.g. ``{"spec": "fashion-mnist:train", "max_images": 5000, "seed": 0}``).
    Returns:
        The cache folder.
    Raises:
        SaeAuditError: the folder exists (without ``resume``/``overwrite``), ``resume``
            finds a cache of something else, a shard is unreadable, or the disk fills.
    """
    if dtype not in CACHE_DTYPES:
        raise SaeAuditError(f"cache dtype {dtype!r} (`dtype`) must be one of {', '.join(CACHE_DTYPES)}",
                            field="dtype")
    if shard_rows <= 0:
        raise SaeAuditError("`shard_rows` must be a positive number of rows", field="shard_rows")
    out = Path(out_dir)
    data = dict(image_set.describe())
    data.update(data_spec or {})
    identity = {
        "model": vm.name, "model_revision": vm.revision, "hook_point": hook_point.name,
        "tokens": hook_point.tokens, "image_size": vm.image_size, "dtype": dtype, "d_in": vm.d_model,
        "data": json.loads(json.dumps(data)),
    }
    if distributed.world().active:
        return _cache_by_ranks(vm, hook_point, image_set, out, identity, shard_rows=shard_rows, dtype=dtype,
                               batch_size=batch_size, resume=resume, overwrite=overwrite, strict=strict,
                               progress=progress)
    if out.exists() and not out.is_dir():
        raise SaeAuditError(f"`out` {out} exists and is a file; name a folder", field="out")
    if resume and out.is_dir() and not (out / META_NAME).exists():
        _check_world_size(out, 1)
    if out.exists() and any(out.iterdir()):
        if resume and (out / META_NAME).exists():
            meta = _read_meta(out)
            diff = [k for k in IDENTITY_KEYS if meta[k] != identity[k]]
            if diff:
                raise SaeAuditError(
                    f"cannot resume {out}: it caches something else ({', '.join(diff)} differ); "
                    "pass the same model, hook, data and dtype, or a new `out`", field="resume"
                )
            meta = _repair(out, meta)
            if meta["complete"]:
                return out
        elif overwrite:
            _remove_cache_files(out)
            meta = None
        else:
            hint = " (it is an activation cache: add `resume` to continue it)" if (out / META_NAME).exists() else ""
            raise SaeAuditError(f"output folder {out} already exists{hint}; pass `overwrite` to replace it",
                                field="out")
    else:
        meta = None
    out.mkdir(parents=True, exist_ok=True)
    if meta is None:
        meta = {"format": CACHE_FORMAT, "schema_version": CACHE_SCHEMA_VERSION, **identity,
                "images_total": len(image_set), "images_done": 0, "images_skipped": 0, "rows": 0,
                "shards": [], "complete": False}
        _atomic_write_text(out / META_NAME, json.dumps(meta, indent=2) + "\n")

    _write_range(vm, hook_point, image_set, out, meta, META_NAME, "shard-", len(image_set), store=CACHE_DTYPES[dtype],
                 shard_rows=shard_rows, batch_size=batch_size, strict=strict, progress=progress)
    if meta["rows"] == 0:
        raise SaeAuditError(f"no activations were written to {out}: no image could be read")
    return out


def _write_range(vm, hook_point, image_set, out: Path, meta: dict, meta_name: str, prefix: str, stop: int, *,
                 store: torch.dtype, shard_rows: int, batch_size: int, strict: bool, progress: bool) -> None:
    """Write the activations of images ``meta["images_done"]..stop-1`` as shards ``{prefix}NNNNN.safetensors``,
    rewriting ``out/meta_name`` after each; mark it complete at the end."""
    from sae_audit.data import iter_batches
    from sae_audit.data.base import Subset
    from sae_audit.train.stream import image_activations

    start = int(meta["images_done"])
    remaining = Subset(image_set, range(start, stop))
    buf: list[torch.Tensor] = []
    n_buf = 0
    shard_first = start
    next_image = start
    bar = None
    lo = int(meta.get("images_first", 0))
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=stop - lo, initial=start - lo, unit="img", desc="caching")

    def flush() -> None:
        nonlocal buf, n_buf, shard_first
        rows = torch.cat(buf).to(store).contiguous()
        name = f"{prefix}{len(meta['shards']):05d}.safetensors"
        final, tmp = out / name, out / (name + ".tmp")
        try:
            save_file({TENSOR_NAME: rows}, str(tmp), metadata={"format": CACHE_FORMAT})
            os.replace(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _disk_error(final, exc) from None
        meta["shards"].append({"file": name, "rows": int(rows.shape[0]), "images": [shard_first, next_image]})
        meta["rows"] += int(rows.shape[0])
        meta["images_done"] = next_image
        meta["images_skipped"] = int(meta.get("images_skipped", 0)) + len(batches.skipped) - skipped_seen[0]
        skipped_seen[0] = len(batches.skipped)
        _atomic_write_text(out / meta_name, json.dumps(meta, indent=2) + "\n")
        buf, n_buf, shard_first = [], 0, next_image

    skipped_seen = [0]
    batches = iter_batches(remaining, vm.preprocess, batch_size, strict=strict, progress=None) if len(remaining) \
        else None
    try:
        for batch in batches or ():
            acts = next(image_activations(vm, hook_point, [batch]))
            next_image = start + int(batch.indices[-1]) + 1
            buf.append(acts)
            n_buf += acts.shape[0]
            if bar is not None:
                bar.n = next_image - lo
                bar.refresh()
            if n_buf >= shard_rows:
                flush()
    except SaeAuditError:
        if strict or batches is None or batches.n_ok or meta_name == META_NAME:
            raise  # under torchrun a share with no readable image is fine if other shares have some
    # Trailing unreadable images after the last good batch are consumed too.
    next_image = stop
    if buf:
        flush()
    meta["images_done"] = stop
    meta["images_skipped"] = int(meta.get("images_skipped", 0)) + (len(batches.skipped) if batches else 0) \
        - skipped_seen[0]
    meta["complete"] = True
    _atomic_write_text(out / meta_name, json.dumps(meta, indent=2) + "\n")
    if bar is not None:
        bar.close()


def _remove_cache_files(out: Path) -> None:
    """Remove a cache's own files (``meta.json``, shards, per-rank records, temporary files), nothing else."""
    for p in out.iterdir():
        if p.name == META_NAME or _SHARD_RE.match(p.name) or _RECORD_RE.match(p.name) or p.name.endswith(".tmp"):
            p.unlink()


def _check_world_size(out: Path, size: int) -> None:
    """Refuse to resume per-rank records written by another number of processes."""
    sizes = {int(m.group(2)) for m in map(_RECORD_RE.match, (p.name for p in out.iterdir())) if m}
    if sizes - {size}:
        raise SaeAuditError(f"cannot resume {out}: it was being written by {max(sizes)} processes under torchrun and "
                            f"this run has {size}; resume with the same number of processes", field="resume")


def _cache_by_ranks(vm, hook_point, image_set, out: Path, identity: dict, *, shard_rows: int, dtype: str,
                    batch_size: int, resume: bool, overwrite: bool, strict: bool, progress: bool) -> Path:
    """:func:`cache_activations` under torchrun: rank ``r`` writes the activations of its contiguous share of the
    images (:func:`sae_audit.distributed.share`) as ``shard-rRRR-NNNNN.safetensors`` with its own progress record
    ``meta.rank-RRR-of-WWW.json`` (resumable per rank, as one process's ``meta.json``); rank 0 alone checks and
    cleans the folder first and, once every rank is done, merges the records into ``meta.json`` (shards in rank
    order, so the rows, read in listed order, are in image order as one process writes them) and removes them."""
    world = distributed.world()
    rank, size = world.rank, world.world_size
    record_name, prefix = f"meta.rank-{rank:03d}-of-{size:03d}.json", f"shard-r{rank:03d}-"

    def prepare() -> str:
        if out.exists() and not out.is_dir():
            raise SaeAuditError(f"`out` {out} exists and is a file; name a folder", field="out")
        if out.exists() and any(out.iterdir()):
            if resume and (out / META_NAME).exists():
                meta = _read_meta(out)
                if [k for k in IDENTITY_KEYS if meta[k] != identity[k]]:
                    raise SaeAuditError(f"cannot resume {out}: it caches something else; pass the same model, hook, "
                                        "data and dtype, or a new `out`", field="resume")
                if meta["complete"]:
                    return "complete"
                raise SaeAuditError(f"cannot resume {out} with {size} processes: one process was writing it; resume "
                                    "it without torchrun", field="resume")
            if resume and any(_RECORD_RE.match(p.name) for p in out.iterdir()):
                _check_world_size(out, size)
            elif overwrite:
                _remove_cache_files(out)
            else:
                raise SaeAuditError(f"output folder {out} already exists; pass `overwrite` to replace it", field="out")
        out.mkdir(parents=True, exist_ok=True)
        return "write"

    if distributed.gather_outcome(lambda: prepare() if world.rank == 0 else None)[0] == "complete":
        return out
    part = distributed.share(len(image_set))

    def write_share() -> dict:
        record = None
        if resume and (out / record_name).is_file():
            record = json.loads((out / record_name).read_text())
            if [k for k in IDENTITY_KEYS if record.get(k) != identity[k]]:
                raise SaeAuditError(f"cannot resume {out}: it caches something else; pass the same model, hook, "
                                    "data and dtype, or a new `out`", field="resume")
            listed = {s["file"] for s in record["shards"]}
            for p in out.iterdir():  # this rank's own leftovers only
                if p.name.startswith(prefix) and p.name not in listed:
                    p.unlink()
            _repair_listed(out, record)
        if record is None:
            record = {"format": CACHE_FORMAT, "schema_version": CACHE_SCHEMA_VERSION, **identity,
                      "images_total": len(image_set), "images_first": part.start, "images_done": part.start,
                      "images_skipped": 0, "rows": 0, "shards": [], "complete": False}
            _atomic_write_text(out / record_name, json.dumps(record, indent=2) + "\n")
        if not record["complete"]:
            _write_range(vm, hook_point, image_set, out, record, record_name, prefix, part.stop,
                         store=CACHE_DTYPES[dtype], shard_rows=shard_rows, batch_size=batch_size, strict=strict,
                         progress=progress and world.rank == 0)
        return record

    records = distributed.gather_outcome(write_share)

    def merge() -> None:
        if world.rank != 0:
            return
        meta = {"format": CACHE_FORMAT, "schema_version": CACHE_SCHEMA_VERSION, **identity,
                "images_total": len(image_set), "images_done": len(image_set),
                "images_skipped": sum(int(r["images_skipped"]) for r in records),
                "rows": sum(int(r["rows"]) for r in records), "shards": [s for r in records for s in r["shards"]],
                "complete": True, "world_size": size}
        _atomic_write_text(out / META_NAME, json.dumps(meta, indent=2) + "\n")
        for r in range(size):
            (out / f"meta.rank-{r:03d}-of-{size:03d}.json").unlink(missing_ok=True)
        if meta["rows"] == 0:
            raise SaeAuditError(f"no activations were written to {out}: no image could be read")

    distributed.gather_outcome(merge)
    return out


def _repair_listed(out: Path, meta: dict[str, Any]) -> None:
    """Check that the shards ``meta`` lists are on disk with the rows it says."""
    for s in meta["shards"]:
        path = out / s["file"]
        if not path.is_file():
            raise SaeAuditError(f"{path} is listed in {META_NAME} but missing; the cache is damaged, rebuild it")
        if _shard_rows(path, int(meta["d_in"]), meta["dtype"]) != int(s["rows"]):
            raise SaeAuditError(f"{path} does not hold the {s['rows']} rows {META_NAME} lists; rebuild the cache")


def _repair(out: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Drop temporary files and shards that ``meta.json`` does not list; check the listed ones."""
    listed = {s["file"] for s in meta["shards"]}
    for p in out.iterdir():
        if p.name.endswith(".tmp") or (_SHARD_RE.match(p.name) and p.name not in listed):
            p.unlink()
    _repair_listed(out, meta)
    return meta


@dataclass
class ActivationCache:
    """Read side of a complete cache folder.

    Attributes:
        path: the folder.
        meta: the parsed ``meta.json``.
    """

    path: Path
    meta: dict[str, Any]

    @classmethod
    def open(cls, path: str | os.PathLike, allow_incomplete: bool = False) -> "ActivationCache":
        """Open and validate a cache folder (headers only; no rows are read).

        Raises:
            SaeAuditError: not a cache, a newer schema, an incomplete cache (unless
                ``allow_incomplete``), or shards missing or of the wrong shape/dtype.
        """
        folder = Path(path)
        meta = _read_meta(folder)
        if not meta["complete"] and not allow_incomplete:
            raise SaeAuditError(
                f"the activation cache {folder} is incomplete (interrupted); finish it with "
                "'sae-audit cache ... --resume' first"
            )
        for s in meta["shards"]:
            p = folder / s["file"]
            if not p.is_file():
                raise SaeAuditError(f"{p} is listed in {META_NAME} but missing; rebuild the cache")
            if _shard_rows(p, int(meta["d_in"]), meta["dtype"]) != int(s["rows"]):
                raise SaeAuditError(f"{p} does not hold the {s['rows']} rows {META_NAME} lists")
        return cls(folder, meta)

    @property
    def d_in(self) -> int:
        return int(self.meta["d_in"])

    def __len__(self) -> int:
        return int(self.meta["rows"])

    def read_shard(self, i: int) -> torch.Tensor:
        """Rows of shard ``i``: ``[rows, d_in]`` float32."""
        with safe_open(str(self.path / self.meta["shards"][i]["file"]), framework="pt") as fh:
            return fh.get_tensor(TENSOR_NAME).float()

    def iter_chunks(self, shuffle: bool = True, seed: int = 0, shards_in_memory: int = 4) -> Iterator[torch.Tensor]:
        """Yield the cache as ``[n, d_in]`` float32 chunks.

        With ``shuffle``, shards are visited in a seeded random order,
        ``shards_in_memory`` at a time; the rows of each group are permuted
        together and yielded in slices. At most ``shards_in_memory`` shards are
        in memory at once, never the whole cache. The order is a pure function
        of ``seed``, so a resumed training run sees the same stream.
        """
        n = len(self.meta["shards"])
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=gen).tolist() if shuffle else list(range(n))
        group = max(1, shards_in_memory) if shuffle else 1
        for g in range(0, n, group):
            rows = torch.cat([self.read_shard(i) for i in order[g: g + group]])
            if shuffle:
                rows = rows[torch.randperm(rows.shape[0], generator=gen)]
            step = max(1, rows.shape[0] // max(1, group))
            for s in range(0, rows.shape[0], step):
                yield rows[s: s + step]

"""The activation cache: rows equal a direct capture, resume after a real kill, a full disk, bad input."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sae_audit.cli import main
from sae_audit.errors import SaeAuditError
from sae_audit.testing import make_image_folder
from sae_audit.train import cache as cache_mod
from sae_audit.train.cache import ActivationCache, cache_activations

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("img") / "images", n_per_class=6, classes=("a", "b", "c", "d"))


@pytest.fixture(scope="module")
def vm(tiny_model_dir):
    from sae_audit.models import load_vision_model

    return load_vision_model(str(tiny_model_dir), device="cpu")


def direct_rows(vm, image_set, tokens="patch"):
    """Reference: every image through capture() one at a time, no batching, no cache."""
    from sae_audit.models import HookPoint, capture, select_tokens

    hp = HookPoint(2, tokens)
    rows = []
    for i in range(len(image_set)):
        pv = vm.preprocess([image_set.load(i)])
        sel = select_tokens(capture(vm, pv, [hp])[hp.name], tokens, vm.layout)
        rows.append(sel.reshape(-1, sel.shape[-1]).float())
    return torch.cat(rows)


def read_all(path) -> torch.Tensor:
    c = ActivationCache.open(path)
    return torch.cat([c.read_shard(i) for i in range(len(c.meta["shards"]))])


def test_cache_rows_equal_direct_capture_and_meta(vm, images, tmp_path):
    from sae_audit.data import open_image_set
    from sae_audit.models import HookPoint

    s = open_image_set(images)
    out = cache_activations(vm, HookPoint(2, "patch"), s, tmp_path / "c", shard_rows=40, batch_size=3,
                                 progress=False)
    cache = ActivationCache.open(out)
    per_image = (32 // 8) ** 2
    assert len(cache) == len(s) * per_image
    meta = json.loads((out / "meta.json").read_text())
    assert meta["complete"] and meta["schema_version"] == 1 and meta["hook_point"] == "block.2"
    assert meta["tokens"] == "patch" and meta["dtype"] == "float32" and meta["d_in"] == 32
    # every shard holds whole images, and the ranges tile the set
    ranges = [tuple(sh["images"]) for sh in meta["shards"]]
    assert ranges[0][0] == 0 and ranges[-1][1] == len(s)
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert all(sh["rows"] == (sh["images"][1] - sh["images"][0]) * per_image for sh in meta["shards"])
    torch.testing.assert_close(read_all(out), direct_rows(vm, s), atol=1e-5, rtol=1e-5)


def test_shuffled_reading_covers_every_row_once_with_bounded_memory(vm, images, tmp_path, monkeypatch):
    from sae_audit.data import open_image_set
    from sae_audit.models import HookPoint

    out = cache_activations(vm, HookPoint(2, "cls"), open_image_set(images), tmp_path / "c", shard_rows=3,
                                 batch_size=3, progress=False)
    cache = ActivationCache.open(out)
    n_shards = len(cache.meta["shards"])
    assert n_shards == 8
    loaded = []
    real = ActivationCache.read_shard
    monkeypatch.setattr(ActivationCache, "read_shard", lambda self, i: loaded.append(i) or real(self, i))
    chunks = []
    for chunk in cache.iter_chunks(shuffle=True, seed=3, shards_in_memory=2):
        chunks.append(chunk)
        # never more than two shards' rows read ahead of what has been yielded
        assert len(loaded) * 3 - sum(c.shape[0] for c in chunks) < 2 * 3
    got = torch.cat(chunks)
    assert sorted(loaded) == list(range(n_shards))
    ref = read_all(out)
    assert got.shape == ref.shape and not torch.equal(got, ref)
    key = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
    assert key(got) == key(ref)
    again = torch.cat(list(cache.iter_chunks(shuffle=True, seed=3, shards_in_memory=2)))
    assert torch.equal(got, again)  # the order is a pure function of the seed


def _cli(*args):
    return [sys.executable, "-m", "sae_audit.cli", *map(str, args)]


def _env():
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    return env


@pytest.mark.slow
def test_cache_survives_a_kill_and_resumes_without_duplicates(tiny_model_dir, tmp_path):
    imgs = make_image_folder(tmp_path / "many", n_per_class=6, classes=tuple(f"c{i}" for i in range(30)))
    common = ["cache", tiny_model_dir, "--hook", "block.2", "--data", imgs, "--shard-rows", "16",
              "--batch-size", "1", "--device", "cpu", "-q"]
    full = tmp_path / "full"
    assert main([str(a) for a in common] + ["--out", str(full)]) == 0

    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli(*common, "--out", out), env=_env(), stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                meta = json.loads((out / "meta.json").read_text())
            except (OSError, ValueError):
                meta = None
            if meta and len(meta["shards"]) >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the cache finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    meta = json.loads((out / "meta.json").read_text())
    assert not meta["complete"]
    # What a kill between a shard's rename and the meta update leaves behind:
    torch.save({}, out / "shard-99999.safetensors.tmp")
    (out / f"shard-{len(meta['shards']):05d}.safetensors").write_bytes(b"half")
    assert main([str(a) for a in common] + ["--out", str(out)]) == 2  # exists: needs --resume
    with pytest.raises(SaeAuditError, match="incomplete"):
        ActivationCache.open(out)
    assert main([str(a) for a in common] + ["--out", str(out), "--resume"]) == 0
    assert torch.equal(read_all(out), read_all(full))
    assert not list(out.glob("*.tmp"))
    assert ActivationCache.open(out).meta["rows"] == ActivationCache.open(full).meta["rows"]


def test_full_disk_leaves_no_corrupt_shard_and_resume_completes(vm, images, tmp_path, monkeypatch):
    from sae_audit.data import open_image_set
    from sae_audit.models import HookPoint

    s = open_image_set(images)
    hp = HookPoint(2, "patch")
    real_save = cache_mod.save_file
    calls = []

    def filling_disk(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 3:
            Path(path).write_bytes(b"partial")  # the disk fills half-way through the write
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(cache_mod, "save_file", filling_disk)
    with pytest.raises(SaeAuditError, match="disk is full"):
        cache_activations(vm, hp, s, tmp_path / "c", shard_rows=40, batch_size=3, progress=False)
    assert not list((tmp_path / "c").glob("*.tmp"))
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert len(meta["shards"]) == 2 and not meta["complete"]
    monkeypatch.setattr(cache_mod, "save_file", real_save)
    cache_activations(vm, hp, s, tmp_path / "c", shard_rows=40, batch_size=3, resume=True, progress=False)
    torch.testing.assert_close(read_all(tmp_path / "c"), direct_rows(vm, s), atol=1e-5, rtol=1e-5)


def test_bad_cache_input(vm, images, tmp_path):
    from sae_audit.data import open_image_set
    from sae_audit.models import HookPoint

    s = open_image_set(images)
    out = cache_activations(vm, HookPoint(2, "cls"), s, tmp_path / "c", shard_rows=8, progress=False)
    with pytest.raises(SaeAuditError, match="already exists"):
        cache_activations(vm, HookPoint(2, "cls"), s, out, progress=False)
    with pytest.raises(SaeAuditError, match="tokens differ"):
        cache_activations(vm, HookPoint(2, "patch"), s, out, resume=True, progress=False)
    with pytest.raises(SaeAuditError, match="cache dtype"):
        cache_activations(vm, HookPoint(2, "cls"), s, tmp_path / "d", dtype="int8", progress=False)
    with pytest.raises(SaeAuditError, match="not an activation cache"):
        ActivationCache.open(tmp_path)
    # a shard swapped for one of another width is caught before any training
    first = out / "shard-00000.safetensors"
    from safetensors.torch import save_file

    save_file({"activations": torch.zeros(8, 5)}, str(first))
    with pytest.raises(SaeAuditError, match=r"\[rows, 32\]"):
        ActivationCache.open(out)
    # a pickle where a shard should be is refused, never unpickled
    torch.save({"activations": torch.zeros(8, 32)}, first)
    with pytest.raises(SaeAuditError, match="not a readable safetensors"):
        ActivationCache.open(out)
    # a half-precision cache reads back as float32
    h = cache_activations(vm, HookPoint(2, "cls"), s, tmp_path / "h", dtype="bfloat16", progress=False)
    rows = read_all(h)
    assert rows.dtype == torch.float32
    torch.testing.assert_close(rows, direct_rows(vm, s, "cls"), atol=0.05, rtol=0.02)

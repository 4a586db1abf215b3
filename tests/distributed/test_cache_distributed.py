"""``sae-audit cache`` under torchrun (2 CPU processes, gloo): per-rank shards, one meta.json, per-rank resume."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from sae_audit.testing import make_image_folder, make_tiny_model_dir
from sae_audit.train.cache import ActivationCache
from tests.distributed.helpers import REPO, env, free_port, kill_job, one_process, torchrun

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist-cache")
    model = make_tiny_model_dir(root / "model")
    images = make_image_folder(root / "images", n_per_class=20, seed=4)  # 60 images, 16 patch rows each
    return root, model, images


def cache_args(setup, out, *extra):
    root, model, images = setup
    return ["cache", model, "--hook", "block.2", "--data", images, "--out", out, "--shard-rows", "16",
            "--batch-size", "3", "--device", "cpu", *extra]


def rows(folder) -> torch.Tensor:
    cache = ActivationCache.open(folder)
    return torch.cat([cache.read_shard(i) for i in range(len(cache.meta["shards"]))])


@pytest.fixture(scope="module")
def reference(setup):
    out = setup[0] / "one"
    single = one_process(cache_args(setup, out, "-q"))
    assert single.returncode == 0, single.stderr
    return rows(out)


def test_two_processes_write_the_rows_of_one(setup, reference, tmp_path):
    dist = torchrun(cache_args(setup, tmp_path / "two"))
    assert dist.returncode == 0, dist.stdout + dist.stderr
    cache = ActivationCache.open(tmp_path / "two")
    names = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert "meta.json" in names and not any(n.startswith("meta.rank-") for n in names)
    files = [s["file"] for s in cache.meta["shards"]]
    assert files[0].startswith("shard-r000-") and files[-1].startswith("shard-r001-")
    # the shards, in listed order, cover the images in order: the rows are one process's, in its order
    spans = [tuple(s["images"]) for s in cache.meta["shards"]]
    assert spans[0][0] == 0 and spans[-1][1] == 60 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert cache.meta["complete"] and cache.meta["images_done"] == 60 and len(cache) == reference.shape[0]
    torch.testing.assert_close(rows(tmp_path / "two"), reference, atol=1e-5, rtol=1e-5)


def test_an_interrupted_cache_resumes_per_rank(setup, reference, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--rdzv-endpoint",
           f"127.0.0.1:{free_port()}", "--nproc_per_node", "2", "-m", "sae_audit.cli",
           *map(str, cache_args(setup, out))]
    proc = subprocess.Popen(cmd, env=env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (out / "shard-r001-00002.safetensors").exists():
            assert proc.poll() is None, "the cache finished before it could be killed"
            time.sleep(0.01)
        kill_job(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    names = {p.name for p in out.iterdir()}
    assert "meta.rank-001-of-002.json" in names and "meta.json" not in names  # killed mid-way
    again = torchrun(cache_args(setup, out, "--resume"))
    assert again.returncode == 0, again.stdout + again.stderr
    torch.testing.assert_close(rows(out), reference, atol=1e-5, rtol=1e-5)
    one = one_process(cache_args(setup, out, "--resume", "-q"))
    assert one.returncode == 0  # complete: nothing left to do


def test_train_from_the_model_under_torchrun(setup, tmp_path):
    """Each rank runs the model on its share of the images; the activations are all-gathered, so the SAE sees
    every image's rows once (the same number of vectors as one process)."""
    root, model, images = setup
    args = ["train", model, "--hook", "block.2", "--data", images, "--k", "4", "--expansion", "2",
            "--max-vectors", "5000", "--eval-vectors", "200", "--sae-batch-size", "32", "--batch-size", "4",
            "--device", "cpu", "--precision", "float32"]
    single = one_process([*args, "--out", tmp_path / "one", "-q"])
    assert single.returncode == 0, single.stderr
    dist = torchrun([*args, "--out", tmp_path / "two"])
    assert dist.returncode == 0, dist.stdout + dist.stderr
    card_one = (tmp_path / "one" / "README.md").read_text()
    card_two = (tmp_path / "two" / "README.md").read_text()
    line = next(line for line in card_one.splitlines() if "training vectors / steps" in line)
    assert "| 760 / 24 " in line  # the stream ran out: 60 images x 16 patch rows, less 200 held out
    assert line in card_two

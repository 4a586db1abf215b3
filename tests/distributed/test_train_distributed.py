"""``sae-audit train`` under torchrun (2 CPU processes, gloo): data-parallel weights, one checkpoint, a killed rank."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.distributed.helpers import REPO, env, free_port, kill_job, one_process, torchrun, worker_of_rank
from tests.train.test_train_resume import write_cache

pytestmark = pytest.mark.slow

# No latent dies within these runs (dead_after is past the run's length), so AuxK is off and the
# data-parallel gradient is the whole batch's (see sae_audit.train.trainer.data_parallel_step).
TRAIN = ["--k", "4", "8", "--expansion", "4", "--max-vectors", "6000", "--eval-vectors", "1000",
         "--sae-batch-size", "64", "--precision", "float32", "--dead-after", "10000000", "--device", "cpu"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return write_cache(tmp_path_factory.mktemp("dist-cache") / "c", 24_000)


def weights(folder: Path) -> dict:
    return {sub.name: load_file(str(sub / "model.safetensors")) for sub in sorted(folder.iterdir()) if sub.is_dir()}


def test_two_processes_train_the_weights_of_one(cache_dir, tmp_path):
    single = one_process(["train", "--cache", cache_dir, *TRAIN, "--out", tmp_path / "one", "-q"])
    assert single.returncode == 0, single.stderr
    dist = torchrun(["train", "--cache", cache_dir, *TRAIN, "--out", tmp_path / "two"])
    assert dist.returncode == 0, dist.stdout + dist.stderr
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert sorted(a) == sorted(b) == ["k4-off0-ratio0", "k8-off0-ratio0"]
    worst = 0.0
    for name in a:
        for t in a[name]:
            # the same updates up to float rounding (the gradient is summed in another order)
            torch.testing.assert_close(b[name][t], a[name][t], atol=2e-4, rtol=1e-4)
            worst = max(worst, float((b[name][t] - a[name][t]).abs().max()))
    assert worst > 0  # two processes really ran (bitwise equality would mean one did all the work)
    assert not (tmp_path / "two" / ".checkpoint").exists()


def test_a_wrong_world_size_cannot_resume(cache_dir, tmp_path):
    """A checkpoint written by two processes is refused by one (the shards, hence the weights, would differ)."""
    out = tmp_path / "run"
    args = ["train", "--cache", cache_dir, *TRAIN, "--max-vectors", "12000", "--checkpoint-every", "10",
            "--out", out]
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--rdzv-endpoint",
                             f"127.0.0.1:{free_port()}", "--nproc_per_node", "2", "-m", "sae_audit.cli",
                             *map(str, args)], env=env(), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        _wait_for(out / ".checkpoint" / "state.pt", proc)
        kill_job(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    single = one_process([*args, "--resume", "-q"])
    assert single.returncode == 2
    assert "written by 2 process(es)" in single.stderr and "Traceback" not in single.stderr


def _wait_for(path: Path, proc, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not path.is_file():
        assert proc.poll() is None, "training ended before its first checkpoint"
        time.sleep(0.02)
    assert path.is_file()


def test_a_killed_rank_is_restarted_and_the_result_equals_an_uninterrupted_run(cache_dir, tmp_path):
    args = ["train", "--cache", cache_dir, *TRAIN, "--max-vectors", "12000", "--checkpoint-every", "20"]
    whole = torchrun([*args, "--out", tmp_path / "whole"])
    assert whole.returncode == 0, whole.stdout + whole.stderr
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--rdzv-endpoint",
           f"127.0.0.1:{free_port()}", "--nproc_per_node", "2", "--max-restarts", "1", "-m", "sae_audit.cli",
           *map(str, args), "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(out / ".checkpoint" / "state.pt", proc)
        victim = worker_of_rank(proc.pid, 1)
        os.kill(victim, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stdout + stderr
    assert "resuming from the checkpoint" in stderr  # the restarted job continued, it did not start over
    a, b = weights(tmp_path / "whole"), weights(out)
    assert sorted(a) == sorted(b)
    for name in a:
        for t in a[name]:
            torch.testing.assert_close(b[name][t], a[name][t], atol=1e-5, rtol=1e-5)


def test_distribute_saes_places_each_sae_on_one_rank_with_the_weights_of_one_process(cache_dir, tmp_path):
    """Three SAEs on two ranks (rank 0: k4 and k12, rank 1: k8), each trained on whole batches of the stream every
    rank reads: the weights equal one process's exactly, and each rank checkpoints its own SAEs."""
    args = ["train", "--cache", cache_dir, *TRAIN, "--k", "4", "8", "12", "--checkpoint-every", "30"]
    single = one_process([*args, "--out", tmp_path / "one", "-q"])
    assert single.returncode == 0, single.stderr
    dist = torchrun([*args, "--distribute-saes", "--out", tmp_path / "two"])
    assert dist.returncode == 0, dist.stdout + dist.stderr
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert sorted(a) == sorted(b) == ["k12-off0-ratio0", "k4-off0-ratio0", "k8-off0-ratio0"]
    for name in a:
        for t in a[name]:
            assert torch.equal(a[name][t], b[name][t]), (name, t)
    card = (tmp_path / "two" / "k8-off0-ratio0" / "README.md").read_text()
    assert "6000 / " in card  # trained on rank 1, written by rank 0 with its summary

"""Training from a cache, checkpoints, a real kill and --resume, bf16 autocast, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae_audit.cli import main
from sae_audit.errors import SaeAuditError
from sae_audit.sae import SAEConfig, load_sae
from sae_audit.train import TrainConfig, fit_saes
from sae_audit.train.cache import ActivationCache

REPO = Path(__file__).resolve().parents[2]
D = 32


def write_cache(folder: Path, n_rows: int, shard_rows: int = 2000, seed: int = 0) -> Path:
    """A cache folder built by hand to the layout documented in sae_audit.train.cache."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(64, D, generator=g)
    folder.mkdir(parents=True)
    shards = []
    for i, start in enumerate(range(0, n_rows, shard_rows)):
        n = min(shard_rows, n_rows - start)
        codes = torch.relu(torch.randn(n, 64, generator=g) - 1.5)  # sparse structure to learn
        rows = codes @ basis + 0.05 * torch.randn(n, D, generator=g)
        save_file({"activations": rows}, str(folder / f"shard-{i:05d}.safetensors"))
        shards.append({"file": f"shard-{i:05d}.safetensors", "rows": n, "images": [start, start + n]})
    meta = {"format": "sae-audit-activations", "schema_version": 1, "model": "synthetic", "model_revision": None,
            "hook_point": "block.1", "tokens": "cls", "image_size": 32, "dtype": "float32", "d_in": D,
            "data": {"name": "synthetic", "size": n_rows}, "images_total": n_rows, "images_done": n_rows,
            "images_skipped": 0, "rows": n_rows, "shards": shards, "complete": True}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return write_cache(tmp_path_factory.mktemp("cache") / "c", 24_000)


TRAIN = ["--k", "4", "8", "--expansion", "8", "--max-vectors", "20000", "--eval-vectors", "2000",
         "--sae-batch-size", "16", "--checkpoint-every", "25", "--precision", "float32", "-q"]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return {sub.name: load_file(str(sub / "model.safetensors")) for sub in sorted(folder.iterdir()) if sub.is_dir()}


@pytest.mark.slow
def test_training_survives_a_kill_and_resumes_to_the_same_weights(cache_dir, tmp_path):
    full = tmp_path / "full"
    assert main(["train", "--cache", str(cache_dir), *TRAIN, "--out", str(full)]) == 0
    assert not (full / ".checkpoint").exists()  # removed once the SAEs are written

    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "sae_audit.cli", "train", "--cache", str(cache_dir), *TRAIN,
                             "--out", str(out)], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (out / ".checkpoint" / "state.pt").is_file():
            time.sleep(0.01)
        time.sleep(0.3)  # let it get past the checkpoint
        assert proc.poll() is None, "training finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    state = torch.load(out / ".checkpoint" / "state.pt", weights_only=True)
    assert 0 < state["step"] < 1250
    assert main(["train", "--cache", str(cache_dir), *TRAIN, "--out", str(out)]) == 2  # exists: needs --resume
    assert main(["train", "--cache", str(cache_dir), *TRAIN, "--out", str(out), "--resume"]) == 0
    a, b = weights(full), weights(out)
    assert sorted(a) == sorted(b) == ["k4-off0-ratio0", "k8-off0-ratio0"]
    for name in a:
        for t in a[name]:
            torch.testing.assert_close(b[name][t], a[name][t], atol=1e-5, rtol=1e-5)
    card = (out / "k8-off0-ratio0" / "README.md").read_text()
    assert "heldout_fvu:" in card and "sae_config:" in card


def test_resume_refuses_other_settings_and_missing_or_pickled_checkpoints(cache_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--cache", str(cache_dir), *TRAIN, "--out", str(out), "--resume"]) == 2
    cfg = [SAEConfig(d_in=D, d_sae=64, k=4, dead_after=500)]
    cache = ActivationCache.open(cache_dir)
    train = TrainConfig(batch_size=32, max_vectors=2000, eval_vectors=500, checkpoint_every=10)
    fit_saes(cfg, cache.iter_chunks(seed=0), train, checkpoint_dir=out, progress=False)
    assert (out / "state.pt").is_file()
    other = TrainConfig(batch_size=32, max_vectors=2000, eval_vectors=500, lr=5e-4)
    with pytest.raises(SaeAuditError, match="other training settings"):
        fit_saes(cfg, cache.iter_chunks(seed=0), other, checkpoint_dir=out, resume=True, progress=False)
    with pytest.raises(SaeAuditError, match="other SAE configs"):
        fit_saes([SAEConfig(d_in=D, d_sae=64, k=5, dead_after=500)], cache.iter_chunks(seed=0), train,
                   checkpoint_dir=out, resume=True, progress=False)

    class Boom:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"schema_version": 1, "x": Boom()}, out / "state.pt")
    with pytest.raises(SaeAuditError, match="not a readable sae-audit checkpoint"):
        fit_saes(cfg, cache.iter_chunks(seed=0), train, checkpoint_dir=out, resume=True, progress=False)


def test_train_cli_from_cache_checks_its_arguments(cache_dir, tmp_path, capsys):
    assert main(["train", "--cache", str(cache_dir), "--data", "digits", *TRAIN, "--out", str(tmp_path / "a")]) == 2
    assert "either --cache or MODEL" in capsys.readouterr().err
    assert main(["train", "--cache", str(cache_dir), "--hook", "block.3", *TRAIN, "--out", str(tmp_path / "b")]) == 2
    assert "contradicts the cache" in capsys.readouterr().err
    assert main(["train", *TRAIN, "--out", str(tmp_path / "c")]) == 2
    assert "--cache DIR" in capsys.readouterr().err


def test_bf16_autocast_trains_and_keeps_float32_parameters(cache_dir):
    cache = ActivationCache.open(cache_dir)
    cfg = [SAEConfig(d_in=D, d_sae=128, k=4, dead_after=2000, lambda_ratio=0.01)]
    res = {}
    for precision in ("float32", "bf16"):
        train = TrainConfig(batch_size=64, max_vectors=12_000, eval_vectors=2000, precision=precision)
        (sae, summary), = fit_saes(cfg, cache.iter_chunks(seed=0), train, progress=False)
        assert sae.W_enc.dtype == torch.float32
        res[precision] = summary.eval_fvu
    assert res["bf16"] < 0.6 and abs(res["bf16"] - res["float32"]) < 0.1, res


def test_lr_schedule_warms_up_and_decays():
    from sae_audit.train.trainer import lr_factor

    f = [lr_factor(s, 100, 0.1, 0.2) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == 1.0 and f[50] == 1.0
    assert f[80] == 1.0 and f[81] == pytest.approx(19 / 20) and f[99] == pytest.approx(1 / 20)
    assert all(a <= b for a, b in zip(f[:10], f[1:11])) and all(a >= b for a, b in zip(f[80:], f[81:]))

"""The paper experiment measures with the audit suites themselves: on the same model, SAE and images, its MS,
probe, OOD AUROC and downstream fidelity equal what `sae-audit run` reports; and its training is paired and
resumable."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sae_audit.sae import load_sae
from sae_audit.testing import make_image_folder, run_cli

PAPER = Path(__file__).resolve().parents[2] / "experiments" / "paper"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"paper_{name}", PAPER / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(PAPER))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(PAPER))
    return mod


@pytest.mark.slow
def test_experiment_ms_probe_and_auroc_equal_the_audit_suites_on_the_same_codes(tmp_path, tiny_model_dir,
                                                                                  tiny_sae_dir):
    ev = _module("evaluate")
    id_dir = make_image_folder(tmp_path / "idset", n_per_class=10, seed=1)
    ood_dir = make_image_folder(tmp_path / "oodset", n_per_class=4, classes=("noise",), seed=2)
    common = ["--hook", "block.2", "--tokens", "patch", "--device", "cpu", "--batch-size", "8", "-q"]
    audit = run_cli("run", str(tiny_model_dir), "--sae", str(tiny_sae_dir), "--id", str(id_dir), "--ood", str(ood_dir),
                    "--suite", "monosemanticity", "--suite", "probing", "--suite", "ood-detection",
                    "--bootstrap", "0", "--out", str(tmp_path / "audit"), "--device", "cpu", "-q")
    assert audit.exit_code == 0, audit.stderr
    res = json.loads((tmp_path / "audit" / "results.json").read_text())
    for name, folder in (("test", id_dir), ("ood", ood_dir)):
        out = run_cli("cache", str(tiny_model_dir), *common, "--data", str(folder), "--out", str(tmp_path / f"cache-{name}"))
        assert out.exit_code == 0, out.stderr

    x, per_image, meta = ev.read_cache(tmp_path / "cache-test", 10**6)
    x_o, per_o, meta_o = ev.read_cache(tmp_path / "cache-ood", 10**6)

    class Args:
        judge_cache = tmp_path / "judge.pt"
        id_cache = tmp_path / "cache-test"
        model = str(tiny_model_dir)

    emb, labels = ev.judge(Args, x.shape[0] // per_image)
    sae = load_sae(tiny_sae_dir).eval()
    got = ev.evaluate_sae(sae, x, per_image, meta["data"]["spec"], labels, emb,
                          {"noise": (x_o, per_o, meta_o["data"]["spec"])}, replicates=20, k_curve_images=10)

    suites = res["saes"][0]["suites"]
    ms_audit = np.array([np.nan if v is None else v for v in suites["monosemanticity"]["datasets"]["idset"]["per_latent"]])
    ms_ours = np.array([np.nan if v is None else v for v in got["id"]["ms_per_latent"]])
    assert np.isfinite(ms_ours).sum() >= 5
    np.testing.assert_array_equal(np.isnan(ms_audit), np.isnan(ms_ours))
    ok = np.isfinite(ms_ours)
    np.testing.assert_allclose(ms_ours[ok], ms_audit[ok], atol=2e-4)  # the audit rounds per-latent MS to 4 digits
    probe_audit = suites["probing"]["datasets"]["idset"]
    assert got["id"]["probe"]["accuracy"] == pytest.approx(probe_audit["accuracy"], abs=1e-9)
    assert got["id"]["probe"]["n_test"] == probe_audit["n_test"]
    hits = np.array(got["id"]["probe_hits"]["hits"])
    assert hits.mean(axis=0) == pytest.approx(probe_audit["accuracy"], abs=1e-9)
    pair = suites["ood-detection"]["pairs"][0]
    for score in ("fvu", "rarity", "l0", "effective_units"):
        assert got["ood"]["noise"][f"auroc_{score}"] == pytest.approx(pair[f"auroc_{score}"], abs=1e-9), score
    # The shuffled-activation chance level is a different number from the MS itself.
    assert got["id"]["ms_chance_mean"] != pytest.approx(got["id"]["ms_mean"], abs=1e-6)



@pytest.mark.slow
def test_experiment_fidelity_equals_the_audit_fidelity_suite(tmp_path, tiny_model_dir, tiny_sae_dir):
    import shutil
    import subprocess

    id_dir = make_image_folder(tmp_path / "idset", n_per_class=5, seed=1)
    ood_dir = make_image_folder(tmp_path / "oodset", n_per_class=6, classes=("noise",), seed=2)
    audit = run_cli("run", str(tiny_model_dir), "--sae", str(tiny_sae_dir), "--id", str(id_dir), "--ood", str(ood_dir),
                    "--suite", "fidelity", "--bootstrap", "0", "--out", str(tmp_path / "audit"), "--device", "cpu", "-q")
    assert audit.exit_code == 0, audit.stderr
    suite = json.loads((tmp_path / "audit" / "results.json").read_text())["saes"][0]["suites"]["fidelity"]
    common = ["--hook", "block.2", "--tokens", "patch", "--device", "cpu", "--batch-size", "8", "-q"]
    for name, folder in (("test", id_dir), ("ood", ood_dir)):
        out = run_cli("cache", str(tiny_model_dir), *common, "--data", str(folder), "--out", str(tmp_path / f"cache-{name}"))
        assert out.exit_code == 0, out.stderr
    shutil.copytree(tiny_sae_dir, tmp_path / "saes" / "seed0" / "sae")
    cmd = [sys.executable, str(PAPER / "fidelity.py"), "--saes", str(tmp_path / "saes" / "seed0"),
           "--id-cache", str(tmp_path / "cache-test"), "--ood-cache", f"noise={tmp_path / 'cache-ood'}",
           "--model", str(tiny_model_dir), "--out", str(tmp_path / "eval"), "--replicates", "20", "--batch-size", "4",
           "--group", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=PAPER.parents[1])
    assert done.returncode == 0, done.stderr
    got = json.loads((tmp_path / "eval" / "seed0" / "sae.fidelity.json").read_text())
    id_suite = suite["datasets"]["idset"]
    assert got["id"]["n_images"] == id_suite["n_images"] == 15
    for key in ("fidelity", "cosine", "cosine_ablation"):
        assert got["id"][key] == pytest.approx(id_suite[key], abs=1e-5), key
    pair = suite["pairs"][0]
    for key in ("fidelity_gap", "auroc_output_distance"):
        assert got["ood"]["noise"][key] == pytest.approx(pair[key], abs=1e-5), key
    # The output really moved: a fidelity of exactly 1 would pass the comparison vacuously.
    assert 0 < got["id"]["fidelity"] < 0.999


def _train(out: Path, cache: Path, steps: int, decay: int = 0) -> None:
    import subprocess

    cmd = [sys.executable, str(PAPER / "train.py"), "--cache", str(cache), "--heldout-cache", str(cache),
           "--out", str(out), "--seeds", "5", "--k", "4", "--l1-off", "1e-3", "--l1-l2-ratio", "1e-2",
           "--frontier", "0.5", "--expansion", "2", "--batch-size", "64", "--steps", str(steps),
           "--stat-vectors", "256", "--curve-images", "4", "--eval-every", "2", "--checkpoint-every", "2",
           "--warmup-steps", "3", "--decay-steps", str(decay)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=PAPER.parents[1],
                          env={**__import__("os").environ, "PYTHONPATH": str(PAPER.parents[1])})
    assert done.returncode == 0, done.stderr


def test_learning_rate_warms_up_stays_constant_then_decays_to_zero():
    lr_factor = _module("train").lr_factor

    class Args:
        warmup_steps, steps, decay_steps = 3, 8, 4

    assert [lr_factor(s, Args) for s in range(8)] == pytest.approx([1 / 3, 2 / 3, 1, 1, 1, 0.75, 0.5, 0.25])
    Args.decay_steps = 0
    assert [lr_factor(s, Args) for s in range(8)] == pytest.approx([1 / 3, 2 / 3, 1, 1, 1, 1, 1, 1])


@pytest.mark.slow
def test_experiment_training_is_paired_and_a_resumed_longer_run_equals_an_uninterrupted_one(tmp_path):
    from safetensors.torch import load_file

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
    try:
        from test_train_resume import write_cache
    finally:
        sys.path.pop(0)
    cache = write_cache(tmp_path / "cache", 3000, shard_rows=1000)
    _train(tmp_path / "straight", cache, 6, decay=2)
    _train(tmp_path / "resumed", cache, 4)  # the constant phase alone, then extended by the decay from its checkpoint
    (tmp_path / "resumed" / "seed5" / "training.json").unlink()
    _train(tmp_path / "resumed", cache, 6, decay=2)
    names = sorted(p.name for p in (tmp_path / "straight" / "seed5").iterdir() if (p / "config.json").is_file())
    assert names == ["k2-off0-ratio0", "k4-off0-ratio0", "k4-off0-ratio0.01", "k4-off0.001-ratio0"]
    for n in names:
        a = load_file(str(tmp_path / "straight" / "seed5" / n / "model.safetensors"))
        b = load_file(str(tmp_path / "resumed" / "seed5" / n / "model.safetensors"))
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
        cfg = json.loads((tmp_path / "straight" / "seed5" / n / "config.json").read_text())
        assert cfg["init_seed"] == 5
    info = json.loads((tmp_path / "resumed" / "seed5" / "training.json").read_text())
    assert info["steps"] == 6 and info["curve"]["step"] == [0, 2, 4, 6]

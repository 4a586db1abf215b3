"""The paper experiment measures with the audit suites themselves: on the same model, SAE and images, its MS,
probe and OOD AUROC equal what `sae-audit run` reports; and its training is paired and resumable."""

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


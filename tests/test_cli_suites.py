"""`sae-audit run --suite ...` and `sae-audit suites` end to end on tiny real models, with the bad inputs."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import torch

from sae_audit.cli import main
from sae_audit.plugin_manager import PluginManager, use_plugin_manager
from sae_audit.suites import available_suites
from sae_audit.testing import make_image_folder, make_tiny_model_dir

with use_plugin_manager(PluginManager(load_entry_points=False)):
    SUITES = list(available_suites())  # the built-in suites


def run_cli(*args) -> int:
    """The command line with the built-in suites only: what an installed plugin adds is not these tests' business."""
    return main(["--no-plugins", *(str(a) for a in args)])


def audit_args(model, sae, ids, ood, out, *extra):
    return ["run", model, "--sae", sae, "--id", ids, "--ood", ood, "--out", out, "--device", "cpu", "-q", *extra]


@pytest.fixture()
def ood_folder(tmp_path):
    return make_image_folder(tmp_path / "ood", n_per_class=3, classes=("a", "b"), seed=5)


@pytest.fixture()
def flat_folder(tmp_path):
    """Unlabelled images: no class subfolders."""
    src = make_image_folder(tmp_path / "src", n_per_class=2, classes=("x", "y"), seed=7)
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in src.rglob("*.png"):
        shutil.copy(p, flat / f"{p.parent.name}-{p.name}")
    return flat


class _Imgs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs))


def test_all_suites_end_to_end(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood_folder, tmp_path):
    out = tmp_path / "audit"
    csv, pq = tmp_path / "latents.csv", tmp_path / "latents.parquet"
    assert run_cli(*audit_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood_folder, out, "--suite", "all",
                               "--latents-csv", csv, "--latents-parquet", pq)) == 0
    results = json.loads((out / "results.json").read_text())
    entry = results["saes"][0]
    assert set(entry["suites"]) == set(SUITES)
    assert results["settings"]["suites"] == list(SUITES)
    assert "frequencies" in entry["datasets"]["images"]  # coverage keys stay where they were
    ms = entry["suites"]["monosemanticity"]["datasets"]["images"]
    assert ms["d_e"] == 32 and len(ms["per_latent"]) == 64 and ms["ms_mean"] is not None
    pair = entry["suites"]["ood-detection"]["pairs"][0]
    assert 0 <= pair["auroc_fvu"] <= 1
    pics = entry["suites"]["pictures"]["pairs"][0]["latents"]
    assert pics and pics[0]["id"][0]["png"]
    # reports: suite tables, HTML thumbnails as data URIs with alt text, Markdown thumbnails as files
    md = (out / "report.md").read_text()
    assert "## Audit suites" in md and "k-robustness" in md and "AUROC" in md
    parser = _Imgs()
    parser.feed((out / "report.html").read_text())
    assert parser.imgs and all(i["src"].startswith("data:image/png;base64,") and i["alt"] for i in parser.imgs)
    thumbs = list((out / "figures").glob("thumb-*.png"))
    assert thumbs and all(f"figures/{t.name}" in md for t in thumbs)
    assert (out / "figures" / "k-robustness-0.png").exists()
    # the per-latent table agrees with results.json
    table = pd.read_csv(csv)
    assert len(table) == 64 and table["latent"].tolist() == list(range(64))
    np.testing.assert_allclose(table["freq:images"], entry["datasets"]["images"]["frequencies"])
    want_ms = np.array([np.nan if v is None else v for v in ms["per_latent"]])
    np.testing.assert_allclose(table["ms:images"], want_ms)
    pd.testing.assert_frame_equal(pd.read_parquet(pq), table, check_dtype=False)
    # and re-rendering from JSON alone gives the same Markdown
    again = tmp_path / "again"
    assert run_cli("report", "render", out / "results.json", "--out", again) == 0
    assert (again / "report.md").read_text() == md


def test_missing_labels_skip_with_note_or_strict_error(tiny_model_dir, tiny_sae_dir, tiny_image_folder, flat_folder,
                                                       tmp_path, capsys):
    out = tmp_path / "audit"
    assert run_cli(*audit_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, flat_folder, out,
                               "--suite", "purity", "--suite", "probing")) == 0
    suites = json.loads((out / "results.json").read_text())["saes"][0]["suites"]
    assert "no labels" in suites["purity"]["datasets"]["flat"]["skipped"]
    assert "skipped" not in suites["purity"]["datasets"]["images"]
    assert "no labels" in suites["probing"]["datasets"]["flat"]["skipped"]
    assert "has no labels" in (out / "report.md").read_text()
    code = run_cli(*audit_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, flat_folder, tmp_path / "s",
                               "--suite", "purity", "--strict"))
    err = capsys.readouterr().err
    assert code == 2 and "needs class labels" in err and "Traceback" not in err


def test_judge_model_and_usage_errors(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood_folder, tmp_path,
                                      capsys):
    judge = make_tiny_model_dir(tmp_path / "judge", family="vit")
    out = tmp_path / "audit"
    assert run_cli(*audit_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood_folder, out,
                               "--suite", "monosemanticity", "--judge", judge)) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["judge"] == str(judge)
    assert results["saes"][0]["suites"]["monosemanticity"]["datasets"]["images"]["judge"] == str(judge)

    assert run_cli(*audit_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood_folder, tmp_path / "x",
                               "--suite", "nope")) == 2
    assert "unknown suite 'nope'" in capsys.readouterr().err
    assert run_cli(*audit_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood_folder, tmp_path / "y",
                               "--latents-csv", tmp_path / "t.txt")) == 2
    assert ".csv suffix" in capsys.readouterr().err


def test_nan_model_is_counted_not_averaged(tiny_sae_dir, tiny_image_folder, ood_folder, tmp_path):
    """A model whose activations are all NaN: every token is dropped and counted, nothing crashes."""
    from transformers import AutoModel

    path = make_tiny_model_dir(tmp_path / "nan-model")
    model = AutoModel.from_pretrained(path)
    with torch.no_grad():
        model.embeddings.position_embeddings[0, 1, 0] = float("nan")
    model.save_pretrained(path)
    out = tmp_path / "audit"
    assert run_cli(*audit_args(path, tiny_sae_dir, tiny_image_folder, ood_folder, out, "--suite", "all")) == 0
    entry = json.loads((out / "results.json").read_text())["saes"][0]
    cov = entry["datasets"]["images"]
    assert cov["n_inputs"] == 0 and cov["n_nonfinite"] == 12 * 16
    ms = entry["suites"]["monosemanticity"]["datasets"]["images"]
    assert ms["n_nonfinite_embeddings"] == 12 and ms["ms_mean"] is None and ms["reason"]
    assert entry["suites"]["k-robustness"]["datasets"]["images"]["fvu"] == [None] * 5
    assert entry["suites"]["ood-detection"]["pairs"][0]["reason"]


def test_suites_lists_every_suite(capsys):
    assert run_cli("suites") == 0
    out = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in out]
    assert names == ["coverage", *SUITES]

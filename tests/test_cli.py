"""The command line end to end on tiny real models, and every user mistake it must catch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sae_audit.cli import main
from sae_audit.outputs import MANIFEST
from sae_audit.testing import make_image_folder, make_tiny_sae_dir


def run_cli(*args: str) -> int:
    return main([str(a) for a in args])


def audit_args(model, sae, ids, ood, out, *extra):
    return ["run", model, "--sae", sae, "--id", ids, "--ood", ood, "--out", out, "--device", "cpu", "-q", *extra]


@pytest.fixture()
def ood_folder(tmp_path):
    return make_image_folder(tmp_path / "ood", n_per_class=3, classes=("a", "b"), seed=5)


def test_run_writes_results_and_reports(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood_folder, tmp_path):
    other = make_tiny_sae_dir(tmp_path / "sae-ratio", lambda_ratio=0.01, seed=1)
    out = tmp_path / "audit"
    code = run_cli(*audit_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood_folder, out, "--sae", other))
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["schema_version"] == 2
    assert results["model"]["name"] == str(tiny_model_dir)
    names = [d["name"] for d in results["datasets"]]
    assert [d["role"] for d in results["datasets"]] == ["id", "ood"]
    assert results["datasets"][0]["n_images"] == 12 and results["datasets"][1]["n_images"] == 6
    assert len(results["saes"]) == 2
    for entry in results["saes"]:
        stats = entry["datasets"][names[0]]
        # 12 images x 16 patch tokens (32 px, patch 8)
        assert stats["n_inputs"] == 12 * 16
        assert 0 <= stats["alive_fraction"] <= 1 and stats["fvu"] is not None
        pair = entry["pairs"][0]
        assert pair["id"] == names[0] and pair["ood"] == names[1]
        for key in ("shared_alive", "n_ood_only", "n_id_only", "js_divergence", "spearman", "fvu_gap"):
            assert key in pair
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert "FVU" in md and "<table>" in html
    assert (out / "figures").is_dir()


def test_train_then_audit_the_trained_sae(tiny_model_dir, tiny_image_folder, ood_folder, tmp_path):
    sae_out = tmp_path / "trained"
    code = run_cli("train", tiny_model_dir, "--hook", "block.1", "--tokens", "patch", "--data", tiny_image_folder,
                   "--k", "4", "--expansion", "2", "--l1-l2-ratio", "0", "0.05", "--max-vectors", "128",
                   "--eval-vectors", "32", "--sae-batch-size", "32", "--out", sae_out, "--device", "cpu", "-q")
    assert code == 0
    folders = sorted(p.name for p in sae_out.iterdir() if p.name != MANIFEST)
    assert folders == ["k4-off0-ratio0", "k4-off0-ratio0.05"]
    cfg = json.loads((sae_out / folders[1] / "config.json").read_text())
    assert cfg["lambda_ratio"] == 0.05 and cfg["hook_point"] == "block.1" and cfg["d_sae"] == 64
    assert "Held-out evaluation" in (sae_out / folders[1] / "README.md").read_text()
    out = tmp_path / "audit"
    assert run_cli(*audit_args(tiny_model_dir, sae_out / folders[0], tiny_image_folder, ood_folder, out)) == 0


# --------------------------------------------------------------------------- bad input
def expect_error(capsys, args, fragment: str) -> None:
    code = run_cli(*args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert fragment in err, err
    assert "Traceback" not in err


def test_existing_output_folder_is_refused_without_overwrite(tiny_model_dir, tiny_sae_dir, tiny_image_folder,
                                                             ood_folder, tmp_path, capsys):
    out = tmp_path / "audit"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    expect_error(capsys, audit_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood_folder, out), "--overwrite")
    assert (out / "keep.txt").read_text() == "precious"


def test_sae_width_mismatch(tiny_model_dir, tiny_image_folder, ood_folder, tmp_path, capsys):
    wide = make_tiny_sae_dir(tmp_path / "wide", d_in=48)
    expect_error(capsys, audit_args(tiny_model_dir, wide, tiny_image_folder, ood_folder, tmp_path / "o"), "d_in=48")


def test_block_past_depth(tiny_model_dir, tiny_image_folder, ood_folder, tmp_path, capsys):
    deep = make_tiny_sae_dir(tmp_path / "deep", hook_point="block.9")
    expect_error(capsys, audit_args(tiny_model_dir, deep, tiny_image_folder, ood_folder, tmp_path / "o"),
                 "past the model's depth")
    expect_error(capsys, ["train", tiny_model_dir, "--hook", "block.4", "--data", tiny_image_folder, "--k", "2",
                          "--expansion", "2", "--out", tmp_path / "t"], "past the depth")


def test_unknown_hook_point(tiny_model_dir, tiny_image_folder, tmp_path, capsys):
    expect_error(capsys, ["train", tiny_model_dir, "--hook", "layer-three", "--data", tiny_image_folder, "--k", "2",
                          "--expansion", "2", "--out", tmp_path / "t"], "unknown hook point")


def test_empty_folder_and_missing_set(tiny_model_dir, tiny_sae_dir, tiny_image_folder, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    expect_error(capsys, audit_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, empty, tmp_path / "o"), "empty")
    no_images = tmp_path / "docs"
    no_images.mkdir()
    (no_images / "readme.txt").write_text("not an image")
    expect_error(capsys, audit_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, no_images, tmp_path / "o"),
                 "no images")
    expect_error(capsys, audit_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, "no-such-set", tmp_path / "o"),
                 "Known image sets")


def test_unreadable_image_is_skipped_and_counted_or_strict_error(tiny_model_dir, tiny_sae_dir, tiny_image_folder,
                                                                  ood_folder, tmp_path, capsys):
    good = (ood_folder / "a" / "a_0.png").read_bytes()
    (ood_folder / "a" / "broken.png").write_bytes(good[: len(good) // 2])
    out = tmp_path / "audit"
    assert run_cli(*audit_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood_folder, out)) == 0
    ood = json.loads((out / "results.json").read_text())["datasets"][1]
    assert ood["n_skipped"] == 1 and "broken.png" in ood["skipped"][0]["item"]
    assert ood["n_images"] == 6
    assert "1 unreadable skipped" in (out / "report.md").read_text()
    expect_error(capsys, audit_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood_folder,
                                    tmp_path / "strict", "--strict"), "broken.png")


def test_model_not_in_cache_offline(tiny_sae_dir, tiny_image_folder, ood_folder, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run(
        [sys.executable, "-m", "sae_audit.cli", *audit_args("nobody/no-such-model", str(tiny_sae_dir),
                                                            str(tiny_image_folder), str(ood_folder),
                                                            str(tmp_path / "o"))],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "nobody/no-such-model" in proc.stderr and "Traceback" not in proc.stderr


def test_failed_render_keeps_previous_report(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood_folder, tmp_path,
                                             monkeypatch):
    out = tmp_path / "audit"
    assert run_cli(*audit_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood_folder, out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    import sae_audit.report.html as html_mod

    def boom(*a, **k):
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(html_mod, "render_html", boom)
    code = run_cli(*audit_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood_folder, out, "--overwrite"))
    assert code == 3
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before  # nothing half-written, nothing lost
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != MANIFEST]


def test_help_and_usage_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "sae-audit run" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["run"])
    assert exc.value.code == 2
    assert run_cli() == 2


def test_report_render_from_json_alone(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood_folder, tmp_path):
    out = tmp_path / "audit"
    assert run_cli(*audit_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood_folder, out)) == 0
    again = tmp_path / "again"
    assert run_cli("report", "render", out / "results.json", "--out", again) == 0
    assert (again / "report.md").read_text() == (out / "report.md").read_text()


def test_sets_lists_named_sets(capsys):
    assert run_cli("sets") == 0
    out = capsys.readouterr().out
    assert "fashion-mnist:test" in out and "clipart" in out


def test_report_render_refuses_a_folder_with_files_and_an_existing_file(tiny_model_dir, tiny_sae_dir,
                                                                        tiny_image_folder, ood_folder, tmp_path,
                                                                        capsys):
    out = tmp_path / "audit"
    assert run_cli(*audit_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood_folder, out)) == 0
    before = (out / "report.md").read_bytes()
    expect_error(capsys, ["report", "render", out / "results.json", "--out", out], "--overwrite")
    assert (out / "report.md").read_bytes() == before
    afile = tmp_path / "afile"
    afile.write_text("hi")
    expect_error(capsys, ["report", "render", out / "results.json", "--out", afile], "is a file")
    assert afile.read_text() == "hi"


def test_tokens_flag_cannot_contradict_the_sae(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood_folder,
                                               tmp_path, capsys):
    expect_error(capsys, audit_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood_folder, tmp_path / "o",
                                    "--tokens", "cls"), "contradicts the SAE's own token set")


def test_overwrite_removes_figures_the_new_report_does_not_use(tiny_model_dir, tiny_sae_dir, tiny_image_folder,
                                                               ood_folder, tmp_path):
    two = make_tiny_sae_dir(tmp_path / "second", seed=4)
    out = tmp_path / "audit"
    assert run_cli(*audit_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood_folder, out, "--sae", two)) == 0
    n_two = len(list((out / "figures").glob("*.png")))
    assert run_cli(*audit_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood_folder, out, "--overwrite")) == 0
    figures = {p.name for p in (out / "figures").glob("*.png")}
    assert len(figures) < n_two
    md = (out / "report.md").read_text()
    assert all(f"figures/{name}" in md for name in figures)

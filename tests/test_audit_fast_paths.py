"""Accuracy guard of the audit's fast paths (issue 12), against a float32 reference written out by hand.

The audit stops the forward at the deepest hooked block, selects tokens once per
hook point, encodes once per SAE and shares the ``x`` statistics between the SAEs
reading the same activations. The reference here runs none of that: a full
forward with ``output_hidden_states=True`` (transformers' own), a dense encode
``ReLU(TopK((x - b_dec) W_enc + b_enc))``, a dense decode and dense sums, one SAE
at a time. On a tiny random DINOv2:

- float32: the audit's firing frequencies equal the reference's exactly, and its
  FVU (about the dataset mean) is within 1e-3 (it is computed in float64 from the
  same float32 rows);
- bf16 weights (``ModelSpec.dtype="bfloat16"``, the SAEs still in float32): every
  latent's firing frequency within ``AUDIT_BF16_FREQ_TOL`` (absolute) of the
  float32 reference and FVU within ``AUDIT_BF16_FVU_TOL`` — the tolerances the
  README's "Speed" section documents (the benchmark measures the same on the real
  DINOv2, ``benchmarks/results/audit_speed.json``, ``bf16_accuracy``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModel

from sae_audit.audit import AuditRequest, AuditSettings, run_audit
from sae_audit.data import ImageOptions, open_image_set
from sae_audit.models import ModelSpec
from sae_audit.testing import make_image_folder, make_tiny_sae_dir

#: Documented tolerance (README, "Speed") of an audit with the model in bf16 against float32:
#: the absolute difference of any latent's firing frequency ...
AUDIT_BF16_FREQ_TOL = 0.05
#: ... and of the FVU.
AUDIT_BF16_FVU_TOL = 5e-3

BATCH = 5


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fast-audit")
    saes = [make_tiny_sae_dir(root / "a", seed=1, hook_point="block.2"),
            make_tiny_sae_dir(root / "b", seed=2, hook_point="block.2", k=6),  # shares block.2 with "a"
            make_tiny_sae_dir(root / "c", seed=3, hook_point="block.1")]
    id_set = make_image_folder(root / "id", n_per_class=6)
    ood_set = make_image_folder(root / "ood", n_per_class=3, classes=("a", "b"), seed=5)
    return saes, str(id_set), str(ood_set)


def audit(model_dir, setup, dtype: str, only: list[int] | None = None) -> dict:
    saes, id_set, ood_set = setup
    saes = saes if only is None else [saes[i] for i in only]
    request = AuditRequest(model=ModelSpec(str(model_dir), device="cpu", dtype=dtype),
                           saes=tuple(str(s) for s in saes), id_set=id_set, ood_sets=(ood_set,),
                           settings=AuditSettings(images=ImageOptions(batch_size=BATCH)))
    return run_audit(request, progress=False)


def reference(model_dir, sae_dir, image_set_name: str) -> tuple[torch.Tensor, float]:
    """Firing frequencies ``[d_sae]`` and FVU of one SAE on one image set, the slow obvious way (float32)."""
    w = load_file(f"{sae_dir}/model.safetensors")
    cfg = json.loads(Path(sae_dir, "config.json").read_text())
    k, block = int(cfg["k"]), int(cfg["hook_point"].split(".")[1])
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    proc = AutoImageProcessor.from_pretrained(str(model_dir))
    image_set = open_image_set(image_set_name, None, 0)
    xs = []
    for start in range(0, len(image_set), BATCH):
        imgs = [image_set.load(i) for i in range(start, min(start + BATCH, len(image_set)))]
        pv = proc(images=imgs, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            hs = model(pixel_values=pv, output_hidden_states=True).hidden_states[block + 1]
        xs.append(hs[:, 1:].reshape(-1, hs.shape[-1]))  # patch tokens (after CLS; no registers)
    x = torch.cat(xs)
    h = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    vals, idx = h.topk(k, dim=1)
    z = torch.zeros_like(h).scatter(1, idx, vals.relu())
    x_hat = z @ w["W_dec"] + w["b_dec"]
    freq = (z > 0).double().sum(0) / x.shape[0]
    x64 = x.double()
    fvu = float((x64 - x_hat.double()).pow(2).sum() / (x64 - x64.mean(0)).pow(2).sum())
    return freq, fvu


def coverage_of(results: dict, i: int, set_index: int) -> tuple[torch.Tensor, float]:
    """Frequencies and FVU of SAE ``i`` on image set ``set_index`` (0: ID, 1: OOD) in ``results``."""
    cov = results["saes"][i]["datasets"][results["datasets"][set_index]["name"]]
    return torch.tensor(cov["frequencies"], dtype=torch.float64), cov["fvu"]


@pytest.fixture(scope="module")
def references(tiny_model_dir, setup):
    saes, id_set, ood_set = setup
    return {(i, j): reference(tiny_model_dir, sae, name) for i, sae in enumerate(saes)
            for j, name in enumerate((id_set, ood_set))}


@pytest.mark.slow
def test_float32_audit_equals_the_dense_reference(tiny_model_dir, setup, references):
    results = audit(tiny_model_dir, setup, "float32")
    for (i, j), (freq, fvu) in references.items():
        got_freq, got_fvu = coverage_of(results, i, j)
        # frequencies are written with 6 significant digits
        torch.testing.assert_close(got_freq, freq, rtol=1e-5, atol=0)
        assert got_fvu == pytest.approx(fvu, abs=1e-3)
        assert (got_freq > 0).sum() == (freq > 0).sum()


@pytest.mark.slow
def test_bf16_audit_stays_within_its_documented_tolerance(tiny_model_dir, setup, references):
    results = audit(tiny_model_dir, setup, "bfloat16")
    for (i, j), (freq, fvu) in references.items():
        got_freq, got_fvu = coverage_of(results, i, j)
        print(f"bf16: SAE {i} set {j}: max |frequency diff| {(got_freq - freq).abs().max().item():.4f}, "
              f"FVU {got_fvu:.4f} vs {fvu:.4f}")
        assert (got_freq - freq).abs().max().item() <= AUDIT_BF16_FREQ_TOL
        assert got_fvu == pytest.approx(fvu, abs=AUDIT_BF16_FVU_TOL)


def test_shared_statistics_change_no_result(tiny_model_dir, setup):
    """An SAE audited beside another at the same hook point (token selection and ``x`` statistics
    shared, bootstrap intervals and the ID noise floor included) gets the results it gets alone."""
    both = audit(tiny_model_dir, setup, "float32", only=[0, 1])
    alone = audit(tiny_model_dir, setup, "float32", only=[1])
    assert both["saes"][1]["datasets"] == alone["saes"][0]["datasets"]
    assert both["saes"][1]["pairs"] == alone["saes"][0]["pairs"]

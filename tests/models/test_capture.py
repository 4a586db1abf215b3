"""capture() and select_tokens() against full forwards of tiny random models, one per family."""

from __future__ import annotations

import pytest
import torch
import transformers as T
from torch import nn

from sae_audit.errors import SaeAuditError
from sae_audit.models import HookPoint, TokenLayout, adapter_for, capture, select_tokens

COMMON = dict(
    hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8
)
N_PATCHES = (32 // 8) ** 2
N_REG = 2


def _build(family: str) -> nn.Module:
    torch.manual_seed(0)
    if family == "vit":
        m = T.ViTModel(T.ViTConfig(**COMMON))
    elif family == "dinov2":
        m = T.Dinov2Model(T.Dinov2Config(**COMMON))
    elif family == "dinov2_with_registers":
        m = T.Dinov2WithRegistersModel(T.Dinov2WithRegistersConfig(**COMMON, num_register_tokens=N_REG))
    elif family == "clip":
        m = T.CLIPVisionModel(T.CLIPVisionConfig(**COMMON))
    elif family == "siglip":
        m = T.SiglipVisionModel(T.SiglipVisionConfig(**COMMON))
    else:  # pragma: no cover
        raise ValueError(family)
    return m.eval()


FAMILIES = ("vit", "dinov2", "dinov2_with_registers", "clip", "siglip")
EXPECTED_LAYOUT = {
    "vit": TokenLayout(True, 0),
    "dinov2": TokenLayout(True, 0),
    "dinov2_with_registers": TokenLayout(True, N_REG),
    "clip": TokenLayout(True, 0),
    "siglip": TokenLayout(False, 0),
}


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {f: _build(f) for f in FAMILIES}


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _reference(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return model(pixel_values=x, output_hidden_states=True).hidden_states


def _hand_select(acts: torch.Tensor, tokens: str, family: str) -> torch.Tensor:
    """The token sets written out by hand per family (independent of TokenLayout)."""
    if tokens == "all":
        return acts
    if family == "siglip":
        assert tokens != "cls"
        first_patch = 0
    elif family == "dinov2_with_registers":
        first_patch = 1 + N_REG
    else:
        first_patch = 1
    if tokens == "cls":
        return acts[:, 0:1]
    patches = acts[:, first_patch:]
    assert patches.shape[1] == N_PATCHES
    return patches if tokens == "patch" else patches.mean(1, keepdim=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_layout_and_adapter(family, models):
    a = adapter_for(models[family])
    assert a.family == family
    assert a.layout(models[family].config) == EXPECTED_LAYOUT[family]
    assert len(a.blocks(models[family])) == 4
    assert adapter_for(family) is a and adapter_for(models[family].config) is a


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("blocks", [[0], [2], [3], [0, 2], [1, 3, 2]])
def test_capture_equals_hidden_states(family, blocks, models, pixels):
    model = models[family]
    ref = _reference(model, pixels)
    got = capture(model, pixels, [HookPoint(b) for b in blocks])
    assert sorted(got) == sorted(f"block.{b}" for b in blocks)
    layout = adapter_for(model).layout(model.config)
    n_tokens = layout.n_prefix + N_PATCHES
    for b in blocks:
        acts = got[f"block.{b}"]
        assert acts.shape == (3, n_tokens, 32)
        assert not acts.requires_grad
        torch.testing.assert_close(acts, ref[b + 1])
        for tokens in ("cls", "patch", "mean", "all"):
            if tokens == "cls" and not layout.has_cls:
                continue
            sel = select_tokens(acts, tokens, layout)
            torch.testing.assert_close(sel, _hand_select(ref[b + 1], tokens, family))
            expected_T = {"cls": 1, "mean": 1, "patch": N_PATCHES, "all": n_tokens}[tokens]
            assert sel.shape == (3, expected_T, 32)


def test_registers_excluded_from_patch_and_mean():
    acts = torch.arange(1 * 7 * 2, dtype=torch.float32).reshape(1, 7, 2)
    layout = TokenLayout(has_cls=True, n_registers=2)
    assert layout.n_prefix == 3
    torch.testing.assert_close(select_tokens(acts, "patch", layout), acts[:, 3:])
    torch.testing.assert_close(select_tokens(acts, "mean", layout), acts[:, 3:].mean(1, keepdim=True))
    torch.testing.assert_close(select_tokens(acts, "cls", layout), acts[:, :1])
    assert TokenLayout(False, 0).n_prefix == 0


def test_string_hook_points(models, pixels):
    model = models["dinov2"]
    ref = _reference(model, pixels)
    got = capture(model, pixels, ["block.1", "2:cls", HookPoint(1, "mean")])
    assert sorted(got) == ["block.1", "block.2"]
    torch.testing.assert_close(got["block.2"], ref[3])
    single = capture(model, pixels, "block.2")
    assert list(single) == ["block.2"]
    torch.testing.assert_close(single["block.2"], ref[3])


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_stops_after_deepest_hooked_block(family, models, pixels):
    model = models[family]
    blocks = adapter_for(model).blocks(model)
    before = [len(b._forward_hooks) for b in blocks]  # transformers may hold hooks of its own
    calls: list[int] = []
    spies = [blocks[i].register_forward_hook(lambda *_a, i=i: calls.append(i)) for i in range(4)]
    try:
        capture(model, pixels, ["block.1"])
    finally:
        for s in spies:
            s.remove()
    assert calls == [0, 1]  # blocks 2 and 3 never ran
    # capture's own hooks are gone, and a normal forward still works afterwards
    assert [len(b._forward_hooks) for b in blocks] == before
    out = model(pixel_values=pixels)
    assert out.last_hidden_state.shape[0] == 3


def test_hooks_removed_when_forward_fails(models):
    model = models["vit"]
    blocks = adapter_for(model).blocks(model)
    before = [len(b._forward_hooks) for b in blocks]
    with pytest.raises(Exception):
        capture(model, torch.randn(1, 5, 32, 32), ["block.1"])  # wrong channel count
    assert [len(b._forward_hooks) for b in blocks] == before


class _TupleBlock(nn.Module):
    """Wraps a block so it returns a tuple, as transformers 4 blocks did."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args, **kwargs):
        return (self.inner(*args, **kwargs),)


def test_tuple_block_outputs(pixels):
    model = _build("vit")
    ref = _reference(model, pixels)
    blocks = adapter_for(model).blocks(model)
    blocks[2] = _TupleBlock(blocks[2])  # the deepest hooked block: its output never reaches block 3
    got = capture(model, pixels, ["block.0", "block.2"])
    torch.testing.assert_close(got["block.2"], ref[3])
    torch.testing.assert_close(got["block.0"], ref[1])


def test_wrapper_models(pixels):
    torch.manual_seed(0)
    clf = T.ViTForImageClassification(T.ViTConfig(**COMMON, num_labels=3)).eval()
    ref = _reference(clf.vit, pixels)
    torch.testing.assert_close(capture(clf, pixels, ["block.2"])["block.2"], ref[3])

    full = T.CLIPModel(
        T.CLIPConfig(
            text_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
            vision_config=COMMON,
            projection_dim=16,
        )
    ).eval()
    ref = _reference(full.vision_model, pixels)
    torch.testing.assert_close(capture(full, pixels, ["block.1"])["block.1"], ref[2])


def test_non_native_resolution_bare_model(models):
    """ViT/CLIP/SigLIP get interpolate_pos_encoding=True off the native size; DINOv2 interpolates itself."""
    x = torch.randn(2, 3, 48, 48)
    for family in FAMILIES:
        model = models[family]
        acts = capture(model, x, ["block.0"])["block.0"]
        n_prefix = EXPECTED_LAYOUT[family].n_prefix
        assert acts.shape == (2, n_prefix + 36, 32), family


@pytest.mark.parametrize("family", FAMILIES)
def test_pooled(family, models, pixels):
    model = models[family]
    pooled = adapter_for(model).pooled(model, pixels)
    assert pooled.shape == (3, 32)
    with torch.no_grad():
        out = model(pixel_values=pixels)
    if family == "vit":
        torch.testing.assert_close(pooled, out.last_hidden_state[:, 0])
    else:
        torch.testing.assert_close(pooled, out.pooler_output)


def test_block_past_depth(models, pixels):
    with pytest.raises(SaeAuditError, match="4 blocks"):
        capture(models["vit"], pixels, ["block.4"])
    with pytest.raises(SaeAuditError, match="at least one"):
        capture(models["vit"], pixels, [])
    with pytest.raises(SaeAuditError, match="unknown hook point"):
        capture(models["vit"], pixels, ["layer6"])


def test_cls_on_siglip(models, pixels):
    model = models["siglip"]
    acts = capture(model, pixels, ["block.0"])["block.0"]
    layout = adapter_for(model).layout(model.config)
    with pytest.raises(SaeAuditError, match="CLS"):
        select_tokens(acts, "cls", layout)
    with pytest.raises(SaeAuditError, match="unknown token set"):
        select_tokens(acts, "first", layout)


def test_unknown_family():
    cfg = T.ResNetConfig()
    with pytest.raises(SaeAuditError, match="supported families: vit, dinov2, dinov2_with_registers, clip, siglip"):
        adapter_for(cfg)
    with pytest.raises(SaeAuditError, match="unsupported model family 'bert'"):
        adapter_for("bert")
    with pytest.raises(SaeAuditError, match="resnet"):
        capture(T.ResNetModel(T.ResNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1])), torch.randn(1, 3, 32, 32), ["block.0"])


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_and_pool_is_capture_plus_pooled_in_one_forward(family, models, pixels):
    from sae_audit.models import capture_and_pool

    model = models[family]
    calls = []
    adapter = adapter_for(model)
    handle = adapter.vision_module(model).register_forward_hook(lambda *a: calls.append(1))
    try:
        acts, pooled = capture_and_pool(model, pixels, ["block.1", "block.3"])
    finally:
        handle.remove()
    assert len(calls) == 1  # one forward pass, not two
    ref = capture(model, pixels, ["block.1", "block.3"])
    for name in ref:
        torch.testing.assert_close(acts[name], ref[name])
    torch.testing.assert_close(pooled, adapter.pooled(model, pixels))

"""Splicing into the residual stream against a slow, hand-written forward, on tiny models of every family."""

from __future__ import annotations

import pytest
import torch
import transformers as T
from torch import nn

from sae_audit.errors import SaeAuditError
from sae_audit.models import adapter_for
from sae_audit.models.splice import continue_forward, forward_with_outputs, splice_tokens

COMMON = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, image_size=32,
              patch_size=8)
N_REG = 2


def _build(kind: str) -> nn.Module:
    torch.manual_seed(0)
    return {
        "vit": lambda: T.ViTModel(T.ViTConfig(**COMMON)),
        "vit_classifier": lambda: T.ViTForImageClassification(T.ViTConfig(**COMMON, num_labels=5)),
        "dinov2": lambda: T.Dinov2Model(T.Dinov2Config(**COMMON)),
        "dinov2_with_registers": lambda: T.Dinov2WithRegistersModel(
            T.Dinov2WithRegistersConfig(**COMMON, num_register_tokens=N_REG)),
        "clip": lambda: T.CLIPVisionModel(T.CLIPVisionConfig(**COMMON)),
        "siglip": lambda: T.SiglipVisionModel(T.SiglipVisionConfig(**COMMON)),
    }[kind]().eval()


KINDS = ("vit", "vit_classifier", "dinov2", "dinov2_with_registers", "clip", "siglip")


def _block_out(o):
    return o[0] if isinstance(o, tuple) else o


def slow_forward(model: nn.Module, kind: str, pixel_values: torch.Tensor, block: int, hidden: torch.Tensor):
    """By hand: the hidden states after ``block`` are ``hidden``; run the remaining blocks one by one, then the
    family's final norm and pooling (and the classifier). Returns ``(pooled, logits or None)``."""
    with torch.no_grad():
        if kind.startswith("vit"):
            vit = model.vit if kind == "vit_classifier" else model
            h = hidden
            for blk in list(vit.layers)[block + 1:]:
                h = _block_out(blk(h, None))
            seq = vit.layernorm(h)
            pooled = seq[:, 0]
            return pooled, (model.classifier(pooled) if kind == "vit_classifier" else None)
        if kind.startswith("dinov2"):
            h = hidden
            for blk in list(model.encoder.layer)[block + 1:]:
                h = _block_out(blk(h, None))
            return model.layernorm(h)[:, 0], None
        vm = getattr(model, "vision_model", model)  # transformers 4 wraps the tower, 5 does not
        h = hidden
        for blk in list(vm.encoder.layers)[block + 1:]:
            h = _block_out(blk(h, None))
        if kind == "clip":
            return vm.post_layernorm(h[:, 0]), None
        return vm.head(vm.post_layernorm(h)), None  # SigLIP: attention-pooling head


def slow_splice(acts: torch.Tensor, tokens: str, n_prefix: int, rep: torch.Tensor) -> torch.Tensor:
    """Token by token: the spliced block output."""
    out = acts.clone()
    for b in range(acts.shape[0]):
        if tokens == "cls":
            out[b, 0] = rep[b, 0]
        elif tokens == "all":
            for t in range(acts.shape[1]):
                out[b, t] = rep[b, t]
        else:
            patches = list(range(n_prefix, acts.shape[1]))
            mean = sum(acts[b, t] for t in patches) / len(patches)
            for i, t in enumerate(patches):
                out[b, t] = rep[b, i] if tokens == "patch" else acts[b, t] - mean + rep[b, 0]
    return out


@pytest.fixture(scope="module")
def models():
    return {k: _build(k) for k in KINDS}


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", KINDS)
def test_full_forward_outputs_are_the_models_own(models, pixels, kind):
    model = models[kind]
    acts, out = forward_with_outputs(model, pixels, ["block.1"])
    with torch.no_grad():
        own = model(pixel_values=pixels, output_hidden_states=True)
    torch.testing.assert_close(acts["block.1"], own.hidden_states[2])
    if kind == "vit_classifier":
        torch.testing.assert_close(out.logits, own.logits)
    else:
        assert out.logits is None
        pooled = own.last_hidden_state[:, 0] if kind == "vit" else own.pooler_output
        torch.testing.assert_close(out.pooled, pooled)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tokens", ["cls", "patch", "mean", "all"])
@pytest.mark.parametrize("block", [0, 2])
def test_splice_and_continue_match_the_slow_forward(models, pixels, kind, tokens, block):
    model = models[kind]
    layout = adapter_for(model).layout(model.config)
    if tokens == "cls" and not layout.has_cls:
        pytest.skip("SigLIP has no CLS token (refused upstream)")
    acts, base = forward_with_outputs(model, pixels, [f"block.{block}"])
    h = acts[f"block.{block}"]
    n_tok = {"cls": 1, "mean": 1, "patch": h.shape[1] - layout.n_prefix, "all": h.shape[1]}[tokens]
    rep = torch.randn(h.shape[0], n_tok, h.shape[2], generator=torch.Generator().manual_seed(block))
    spliced = splice_tokens(h, tokens, layout, rep)
    ref_h = slow_splice(h, tokens, layout.n_prefix, rep)
    torch.testing.assert_close(spliced, ref_h, atol=1e-5, rtol=1e-5)
    got = continue_forward(model, pixels, block, spliced)
    pooled, logits = slow_forward(model, kind, pixels, block, ref_h)
    torch.testing.assert_close(got.pooled, pooled, atol=1e-5, rtol=1e-4)
    if logits is not None:
        torch.testing.assert_close(got.logits, logits, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got.pooled, base.pooled)  # the splice changed the output
    same = continue_forward(model, pixels, block, h)  # splicing the block's own output back in changes nothing
    torch.testing.assert_close(same.pooled, base.pooled, atol=1e-5, rtol=1e-5)
    # the model is left as it was: its own forward is unchanged afterwards
    _, again = forward_with_outputs(model, pixels, [f"block.{block}"])
    torch.testing.assert_close(again.pooled, base.pooled)


def test_stacked_replacements_are_one_batch(models, pixels):
    model = models["dinov2"]
    acts, _ = forward_with_outputs(model, pixels, ["block.1"])
    h = acts["block.1"]
    a, b = h + 0.5, h * 0.7
    both = continue_forward(model, pixels.repeat(2, 1, 1, 1), 1, torch.cat([a, b])).chunk(2)
    torch.testing.assert_close(both[0].pooled, continue_forward(model, pixels, 1, a).pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[1].pooled, continue_forward(model, pixels, 1, b).pooled, atol=1e-5, rtol=1e-5)


class _Detached(nn.Module):
    """A 'model' whose forward runs copies of its blocks, not the ones its adapter names."""

    def __init__(self, inner):
        super().__init__()
        import copy

        self.inner = inner
        self.shadow = copy.deepcopy(inner.encoder.layer)

    def forward(self, pixel_values, **kw):
        h = self.inner.embeddings(pixel_values)
        for blk in self.shadow:
            h = _block_out(blk(h, None))
        return T.modeling_outputs.BaseModelOutputWithPooling(last_hidden_state=h, pooler_output=h[:, 0])


def test_a_forward_that_bypasses_the_hooked_blocks_is_refused_clearly(models, pixels):
    from sae_audit.models.adapters import Dinov2Adapter

    class Adapter(Dinov2Adapter):
        def blocks(self, model):
            return model.inner.encoder.layer

    det = _Detached(models["dinov2"])
    from sae_audit.models import TokenLayout, VisionModel

    vm = VisionModel(model=det, processor=None, family="detached", name="detached", revision=None,
                     device=torch.device("cpu"), dtype=torch.float32, num_blocks=4, d_model=32,
                     layout=TokenLayout(True), patch_size=8, image_size=32, adapter=Adapter())
    with pytest.raises(SaeAuditError, match="does not run the blocks sae-audit hooks"):
        continue_forward(vm, pixels, 1, torch.zeros(3, 17, 32))

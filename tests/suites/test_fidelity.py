"""The fidelity suite through a real audit (tiny models, real image files) against a hand-written reference."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from sae_audit.audit import AuditedSAE, AuditSettings, audit_loaded
from sae_audit.data import ImageOptions, open_image_set
from sae_audit.errors import SaeAuditError
from sae_audit.models import HookPoint, load_vision_model
from sae_audit.sae import SAEConfig, TopKSAE
from sae_audit.testing import make_image_folder, make_tiny_sae_dir


def settings(bootstrap=0):
    return AuditSettings(images=ImageOptions(batch_size=5), bootstrap=bootstrap)


def reference(vm, sae, block, id_set, sets):
    """Per set: ``(fidelity, mean cos(y, y_sae))`` by hand: one image at a time, the model's hidden states, the
    patch tokens replaced, the remaining blocks run one by one, the final layernorm's CLS token."""
    enc = vm.model

    def hidden(img):
        with torch.no_grad():
            return enc(pixel_values=vm.preprocess([img]), output_hidden_states=True)

    id_mean = torch.cat([hidden(id_set.load(i)).hidden_states[block + 1][0, 1:] for i in range(len(id_set))]).mean(0)

    def finish(h):
        with torch.no_grad():
            for blk in list(enc.encoder.layer)[block + 1:]:
                h = blk(h, None)
                h = h[0] if isinstance(h, tuple) else h
            return enc.layernorm(h)[0, 0]

    out = {}
    for s in sets:
        d_sae, d_abl, cos = [], [], []
        for i in range(len(s)):
            own = hidden(s.load(i))
            h = own.hidden_states[block + 1]
            y = own.pooler_output[0]
            rec, abl = h.clone(), h.clone()
            rec[0, 1:] = sae.decode(sae.encode(h[0, 1:]))
            abl[0, 1:] = id_mean
            c = torch.nn.functional.cosine_similarity(y, finish(rec), dim=0)
            d_sae.append(1 - c)
            cos.append(c)
            d_abl.append(1 - torch.nn.functional.cosine_similarity(y, finish(abl), dim=0))
        out[s.name] = (1 - torch.stack(d_sae).mean() / torch.stack(d_abl).mean(), torch.stack(cos).mean())
    return out


@torch.no_grad()
def test_fidelity_matches_a_hand_written_splice(tiny_model_dir, tiny_sae_dir, tmp_path):
    from sae_audit.sae import load_sae

    vm = load_vision_model(tiny_model_dir, device="cpu")
    sae = load_sae(tiny_sae_dir)
    id_set = open_image_set(str(make_image_folder(tmp_path / "id", n_per_class=3)))
    ood = open_image_set(str(make_image_folder(tmp_path / "ood", n_per_class=2, classes=("a", "b"), seed=4)))
    results = audit_loaded(vm, [AuditedSAE("s", sae, HookPoint(2, "patch"), "s")], id_set, [ood], settings(20),
                           ["fidelity"], progress=False)
    got = results["saes"][0]["suites"]["fidelity"]
    ref = reference(vm, sae, 2, id_set, [id_set, ood])
    for s in (id_set, ood):
        d = got["datasets"][s.name]
        assert d["fidelity"] == pytest.approx(float(ref[s.name][0]), rel=1e-4, abs=1e-5)
        assert d["cosine"] == pytest.approx(float(ref[s.name][1]), rel=1e-5)
        assert d["n_images"] == len(s) and not d["logits"]
        assert d["intervals"]["fidelity"][0] <= d["intervals"]["fidelity"][1]
    pair = got["pairs"][0]
    assert pair["fidelity_gap"] == pytest.approx(float(ref[id_set.name][0] - ref[ood.name][0]), rel=1e-4, abs=1e-5)
    assert 0.0 <= pair["auroc_output_distance"] <= 1.0
    assert "unavailable" in got["noise_floor"]  # 9 ID images cannot be split into halves of 10


def exact_sae(d_in: int, hook: str, tokens: str) -> TopKSAE:
    """An SAE that reconstructs exactly: latents ``x`` and ``-x``, Top-k keeps the non-negative half."""
    sae = TopKSAE(SAEConfig(d_in=d_in, d_sae=2 * d_in, k=d_in, hook_point=hook, tokens=tokens))
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


@torch.no_grad()
@pytest.mark.parametrize("tokens", ["cls", "patch", "mean", "all"])
def test_an_exact_sae_has_fidelity_one_on_every_token_set(tiny_model_dir, tmp_path, tokens):
    vm = load_vision_model(tiny_model_dir, device="cpu")
    sae = exact_sae(vm.d_model, "block.1", tokens)
    id_set = open_image_set(str(make_image_folder(tmp_path / "id", n_per_class=2)))
    ood = open_image_set(str(make_image_folder(tmp_path / "ood", n_per_class=2, classes=("a",), seed=4)))
    results = audit_loaded(vm, [AuditedSAE("x", sae, HookPoint(1, tokens), "x")], id_set, [ood], settings(),
                           ["fidelity"], progress=False)
    for d in results["saes"][0]["suites"]["fidelity"]["datasets"].values():
        assert d["fidelity"] == pytest.approx(1.0, abs=1e-4)
        assert d["cosine"] == pytest.approx(1.0, abs=1e-6)
        assert d["cosine_ablation"] < 1.0  # erasing the tokens does change the output


@torch.no_grad()
def test_a_classification_head_adds_kl_and_top1(tmp_path):
    torch.manual_seed(0)
    cfg = T.ViTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                      image_size=32, patch_size=8, num_labels=4)
    T.ViTForImageClassification(cfg).save_pretrained(tmp_path / "vit")
    T.ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")
    vm = load_vision_model(tmp_path / "vit", device="cpu")
    assert type(vm.model).__name__ == "ViTForImageClassification"
    sae = load_sae_dir(tmp_path)
    id_set = open_image_set(str(make_image_folder(tmp_path / "id", n_per_class=2)))
    ood = open_image_set(str(make_image_folder(tmp_path / "ood", n_per_class=2, classes=("a",), seed=4)))
    results = audit_loaded(vm, [AuditedSAE("s", sae, HookPoint(1, "patch"), "s")], id_set, [ood], settings(20),
                           ["fidelity"], progress=False)
    entry = results["saes"][0]["suites"]["fidelity"]
    d = entry["datasets"][id_set.name]
    assert d["logits"] and d["kl"] >= 0 and 0 <= d["top1_agreement"] <= 1
    assert "fidelity_kl" in d and "fidelity_kl_gap" in entry["pairs"][0]
    exact = audit_loaded(vm, [AuditedSAE("x", exact_sae(32, "block.1", "patch"), HookPoint(1, "patch"), "x")],
                         id_set, [ood], settings(), ["fidelity"], progress=False)
    d = exact["saes"][0]["suites"]["fidelity"]["datasets"][id_set.name]
    assert d["kl"] == pytest.approx(0.0, abs=1e-8) and d["top1_agreement"] == 1.0


def load_sae_dir(tmp_path):
    from sae_audit.sae import load_sae

    return load_sae(make_tiny_sae_dir(tmp_path / "sae", hook_point="block.1"))


class _MultiScale(torch.nn.Module):
    """A model whose pooled output also reads block 0's output: its output does not follow from block 2's alone."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, pixel_values, **kw):
        seen = {}
        handle = self.inner.encoder.layer[0].register_forward_hook(lambda m, i, o: seen.setdefault("h0", o))
        try:
            out = self.inner(pixel_values=pixel_values)
        finally:
            handle.remove()
        h0 = seen["h0"][0] if isinstance(seen["h0"], tuple) else seen["h0"]
        return T.modeling_outputs.BaseModelOutputWithPooling(last_hidden_state=out.last_hidden_state,
                                                             pooler_output=torch.cat([out.pooler_output,
                                                                                      50 * h0[:, 0]], dim=-1))


@torch.no_grad()
def test_a_model_whose_output_cannot_be_computed_after_the_hook_is_refused(tiny_model_dir, tiny_sae_dir, tmp_path):
    from dataclasses import replace

    from sae_audit.models.adapters import Dinov2Adapter
    from sae_audit.sae import load_sae

    class Adapter(Dinov2Adapter):
        family = "multiscale"

        def blocks(self, model):
            return model.inner.encoder.layer

        def vision_module(self, model):
            return model

    vm = load_vision_model(tiny_model_dir, device="cpu")
    vm = replace(vm, model=_MultiScale(vm.model), adapter=Adapter(), family="multiscale")
    id_set = open_image_set(str(make_image_folder(tmp_path / "id", n_per_class=2)))
    ood = open_image_set(str(make_image_folder(tmp_path / "ood", n_per_class=2, classes=("a",), seed=4)))
    item = AuditedSAE("s", load_sae(tiny_sae_dir), HookPoint(2, "patch"), "s")
    with pytest.raises(SaeAuditError, match="cannot compute the output of .* after block.2 from the block's output"):
        audit_loaded(vm, [item], id_set, [ood], settings(), ["fidelity"], progress=False)
    # without the fidelity suite the same model audits fine
    assert audit_loaded(vm, [item], id_set, [ood], settings(), [], progress=False)["saes"][0]["pairs"]

"""Format readers against files and encodings written by the real libraries.

The folders under tests/fixtures/reference_saes/ were written by SAELens 6.54,
eai-sparsify 1.3.3 and saev 0.1.0 (tests/fixtures/make_reference_saes.py, run
outside CI); each holds the library's own encodings of fixed inputs.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae_audit.errors import SaeAuditError
from sae_audit.sae import load_sae, save_sae
from sae_audit.sae.formats import hook_from_name

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "reference_saes"

EQUIVALENT = {
    "saelens-topk": ("topk", "block.8"),
    "saelens-topk-rescale-nobdec": ("topk", "block.8"),
    "saelens-jumprelu": ("jumprelu", "block.5"),
    "saelens-standard": ("relu", "block.2"),
    "saelens-batchtopk": ("jumprelu", None),
    "saelens-v5-flat": ("topk", "block.2"),
    "sparsify/layers.6": ("topk", "block.6"),
    "saev-0.1.0": ("relu", None),
}


@pytest.mark.parametrize("name", sorted(EQUIVALENT))
def test_reader_matches_the_library_encodings(name, tmp_path):
    ref = load_file(str(FIX / name / "reference.safetensors"))
    sae = load_sae(FIX / name)
    arch, hook = EQUIVALENT[name]
    assert sae.config.architecture == arch and sae.config.hook_point == hook
    codes = sae.encode(ref["x"])
    torch.testing.assert_close(codes.to_dense(), ref["codes"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.decode(codes), ref["x_hat"], atol=1e-5, rtol=1e-5)
    # converted to the native format, the SAE encodes the same
    again = load_sae(save_sae(sae, tmp_path / "native"))
    torch.testing.assert_close(again.encode(ref["x"]).to_dense(), ref["codes"], atol=1e-5, rtol=1e-5)


def test_jumprelu_budget_keeps_the_largest_activations():
    ref = load_file(str(FIX / "saelens-jumprelu" / "reference.safetensors"))
    sae = load_sae(FIX / "saelens-jumprelu")
    dense = ref["codes"]
    codes = sae.encode(ref["x"], k=2)
    expected = torch.zeros_like(dense)
    for i in range(dense.shape[0]):  # slow reference: the two largest of each row
        order = sorted(range(dense.shape[1]), key=lambda j: -float(dense[i, j]))[:2]
        for j in order:
            expected[i, j] = dense[i, j]
    torch.testing.assert_close(codes.to_dense(), expected)


def saev_schema2_file(folder: Path, activation: dict, seed=0, d=16, exp=3, b_enc_shift=0.0) -> dict:
    """A saev checkpoint laid out as saev's ``dump`` on GitHub writes it (header schema 2)."""
    g = torch.Generator().manual_seed(seed)
    state = {"W_enc": torch.randn(d, d * exp, generator=g), "b_enc": torch.randn(d * exp, generator=g) * 0.1 + b_enc_shift,
             "W_dec": torch.randn(d * exp, d, generator=g), "b_dec": torch.randn(d, generator=g)}
    header = {"schema": 2, "cfg": {"d_vit": d, "exp_factor": exp, "n_reinit_samples": 10, "remove_parallel_grads": True,
                                   "normalize_w_dec": True, "seed": 0, "activation": activation},
              "commit": "unknown", "lib": "test"}
    folder.mkdir(parents=True)
    with open(folder / "sae.pt", "wb") as fh:
        fh.write((json.dumps(header) + "\n").encode())
        torch.save(state, fh)
    return state


def test_saev_schema2_topk_keeps_raw_values_without_b_dec(tmp_path):
    state = saev_schema2_file(tmp_path / "s", {"cls": "TopK", "params": {"top_k": 5}}, b_enc_shift=-25.0)
    sae = load_sae(tmp_path / "s")
    x = torch.randn(6, 16, generator=torch.Generator().manual_seed(1)) * 3
    expected = torch.zeros(6, 48)
    for i in range(6):  # slow loop of saev's encode: x @ W_enc + b_enc, top-k of raw values
        h = [float(sum(x[i, a] * state["W_enc"][a, j] for a in range(16)) + state["b_enc"][j]) for j in range(48)]
        for j in sorted(range(48), key=lambda j: -h[j])[:5]:
            expected[i, j] = h[j]
    torch.testing.assert_close(sae.encode(x).to_dense(), expected, atol=1e-4, rtol=1e-5)
    assert (expected < 0).any(), "the fixture should exercise negative selected values"
    torch.testing.assert_close(sae.decode(sae.encode(x)), expected @ state["W_dec"] + state["b_dec"],
                               atol=1e-4, rtol=1e-5)


def test_saev_schema2_relu(tmp_path):
    state = saev_schema2_file(tmp_path / "s", {"cls": "Relu", "params": {}}, seed=2)
    sae = load_sae(tmp_path / "s")
    x = torch.randn(4, 16)
    torch.testing.assert_close(sae.encode(x).to_dense(), torch.relu(x @ state["W_enc"] + state["b_enc"]),
                               atol=1e-5, rtol=1e-5)


def test_hook_names_map_to_block_outputs():
    assert hook_from_name("blocks.8.hook_resid_post") == "block.8"
    assert hook_from_name("blocks.8.hook_resid_pre") == "block.7"
    assert hook_from_name("blocks.0.hook_resid_pre") is None
    assert hook_from_name("vision_model.encoder.layers.11") == "block.11"
    assert hook_from_name("vit.encoder.layer.3") == "block.3"
    assert hook_from_name("blocks.3.attn.hook_z") is None
    assert hook_from_name(None) is None


# --------------------------------------------------------------------------- bad input
def copy(name, tmp_path) -> Path:
    dst = tmp_path / name.replace("/", "_")
    shutil.copytree(FIX / name, dst)
    return dst


def edit_json(path: Path, **changes):
    cfg = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    path.write_text(json.dumps(cfg))


def test_unsupported_architectures_and_normalisations_are_refused_by_name():
    with pytest.raises(SaeAuditError, match="'gated' is not supported"):
        load_sae(FIX / "saelens-gated")
    with pytest.raises(SaeAuditError, match="'layer_norm'"):
        load_sae(FIX / "saelens-layernorm")
    with pytest.raises(SaeAuditError, match="skip connection"):
        load_sae(FIX / "sparsify-skip")


def test_missing_or_contradictory_config_keys(tmp_path):
    d = copy("saelens-topk", tmp_path)
    edit_json(d / "cfg.json", d_sae=None)
    with pytest.raises(SaeAuditError, match="missing the key 'd_sae'"):
        load_sae(d)
    d = copy("saelens-topk", tmp_path / "b")
    edit_json(d / "cfg.json", d_sae=40)
    with pytest.raises(SaeAuditError, match=r"W_enc has shape \[16, 48\], config says \[16, 40\]"):
        load_sae(d)
    d = copy("saelens-topk", tmp_path / "c")
    edit_json(d / "cfg.json", k=49)
    with pytest.raises(SaeAuditError, match="k=49 is larger than d_sae=48"):
        load_sae(d)
    d = copy("sparsify/layers.6", tmp_path / "d")
    edit_json(d / "cfg.json", num_latents=32)
    with pytest.raises(SaeAuditError, match="cfg.json says"):
        load_sae(d)
    d = copy("saev-0.1.0", tmp_path / "e")
    raw = (d / "sae.pt").read_bytes()
    header, rest = raw.split(b"\n", 1)
    cfg = json.loads(header)
    cfg.pop("d_vit")
    (d / "sae.pt").write_bytes(json.dumps(cfg).encode() + b"\n" + rest)
    with pytest.raises(SaeAuditError, match="missing the key 'd_vit'"):
        load_sae(d)


def test_wrong_dtype_and_nan_weights(tmp_path):
    d = copy("saelens-topk", tmp_path)
    t = load_file(str(d / "sae_weights.safetensors"))
    t["b_enc"] = torch.zeros(48, dtype=torch.int32)
    save_file(t, str(d / "sae_weights.safetensors"))
    with pytest.raises(SaeAuditError, match="b_enc has dtype torch.int32"):
        load_sae(d)
    t["b_enc"] = torch.zeros(48)
    t["W_dec"][3, 2] = float("nan")
    save_file(t, str(d / "sae_weights.safetensors"))
    with pytest.raises(SaeAuditError, match="W_dec contains NaN"):
        load_sae(d)
    # half-precision weights are fine and read as float32
    t = load_file(str(FIX / "sparsify/layers.6/sae.safetensors"))
    d = copy("sparsify/layers.6", tmp_path / "bf")
    save_file({k: v.to(torch.bfloat16) for k, v in t.items()}, str(d / "sae.safetensors"))
    assert load_sae(d).W_enc.dtype == torch.float32


class Boom:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_pickles_are_refused_never_unpickled(tmp_path, capsys):
    d = copy("saelens-topk", tmp_path)
    torch.save({"W_enc": torch.zeros(16, 48), "x": Boom()}, d / "sae_weights.safetensors")
    with pytest.raises(SaeAuditError, match="not a readable safetensors file"):
        load_sae(d)
    d = copy("saev-0.1.0", tmp_path / "s")
    header = (d / "sae.pt").read_bytes().split(b"\n", 1)[0]
    buf = io.BytesIO()
    torch.save({"W_enc": Boom()}, buf)
    (d / "sae.pt").write_bytes(header + b"\n" + buf.getvalue())
    with pytest.raises(SaeAuditError, match="refused without unpickling"):
        load_sae(d)
    (d / "sae.pt").write_bytes(buf.getvalue())  # a bare pickle, no header line
    with pytest.raises(SaeAuditError, match="not a saev checkpoint"):
        load_sae(d)
    assert "unpickled!" not in capsys.readouterr().out


@pytest.mark.parametrize("arch", ["jumprelu", "relu"])
def test_imported_architectures_run_through_the_whole_audit(arch, tiny_model_dir, tiny_image_folder, tmp_path):
    """A JumpReLU/ReLU SAE (variable code width) goes through the CLI audit like a Top-k one."""
    from sae_audit.cli import main
    from sae_audit.sae import SAEConfig
    from sae_audit.sae import build_sae
    from sae_audit.testing import make_image_folder

    sae = build_sae(SAEConfig(d_in=32, d_sae=64, k=64, architecture=arch, hook_point="block.2", tokens="patch"))
    with torch.no_grad():
        sae.b_enc.fill_(-0.5)
        if arch == "jumprelu":
            sae.threshold.fill_(0.1)
    folder = save_sae(sae, tmp_path / "sae")
    ood = make_image_folder(tmp_path / "ood", n_per_class=2, classes=("x", "y"), seed=4)
    out = tmp_path / "audit"
    assert main(["run", str(tiny_model_dir), "--sae", str(folder), "--id", str(tiny_image_folder), "--ood",
                 str(ood), "--out", str(out), "--device", "cpu", "-q"]) == 0
    results = json.loads((out / "results.json").read_text())
    entry = results["saes"][0]
    assert entry["config"]["architecture"] == arch

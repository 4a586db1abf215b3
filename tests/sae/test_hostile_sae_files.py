"""SAE folders built to hurt: size claims, FIFOs, wrong JSON types, deep nesting, odd local paths.

Real files in tmp_path, real FIFOs and links; loads that could hang or
allocate run in a child process with a timeout and a memory ceiling
(tests/isolated.py), so a regression fails instead of hanging or swapping.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from sae_audit.errors import SaeAuditError
from sae_audit.sae import SAEConfig, TopKSAE, load_sae, save_sae
from tests.isolated import run_isolated

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "reference_saes"


def copy(name: str, dst: Path) -> Path:
    shutil.copytree(FIX / name, dst)
    return dst


def edit_json(path: Path, **changes) -> None:
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def native(folder: Path) -> Path:
    return save_sae(TopKSAE(SAEConfig(d_in=16, d_sae=48, k=4)), folder)


def load_in_child(folders: list[Path], timeout: float = 60) -> dict:
    """Load each folder in a child process; report each message and the peak memory growth."""
    return run_isolated(f"""
        msgs = []
        for folder in {[str(f) for f in folders]!r}:
            try:
                load_sae(folder)
                msgs.append("loaded")
            except SaeAuditError as exc:
                msgs.append(str(exc))
        report(msgs=msgs)
    """, imports="from sae_audit.sae import load_sae\nfrom sae_audit.errors import SaeAuditError", timeout=timeout)


# --------------------------------------------------------------------------- A1: size claims vs the tensors
def test_huge_size_claims_are_refused_before_allocating(tmp_path: Path) -> None:
    folders = []
    for i, d_sae in enumerate((30_000_000, 2**40)):
        f = native(tmp_path / f"native{i}")
        edit_json(f / "config.json", d_sae=d_sae)
        folders.append(f)
        f = copy("saelens-topk", tmp_path / f"saelens{i}")
        edit_json(f / "cfg.json", d_sae=d_sae)
        folders.append(f)
    f = copy("sparsify/layers.6", tmp_path / "sparsify")
    edit_json(f / "cfg.json", num_latents=2**40)
    folders.append(f)
    f = copy("sparsify/layers.6", tmp_path / "sparsify-exp")
    edit_json(f / "cfg.json", num_latents=0, expansion_factor=2**36)
    folders.append(f)
    out = load_in_child(folders)
    expect = ["W_enc has shape [16, 48], config says [16, 30000000]",
              "W_enc has shape [16, 48], config says [16, 30000000]",
              "W_enc has shape [16, 48], config says [16, 1099511627776]",
              "W_enc has shape [16, 48], config says [16, 1099511627776]",
              "encoder.weight has shape [48, 16], cfg.json says [1099511627776, 16]",
              "encoder.weight has shape [48, 16], cfg.json says [1099511627776, 16]"]
    for msg, want in zip(out["msgs"], expect):
        assert want in msg
    assert out["peak_mb"] < 150, out  # nothing of the claimed size was allocated


def test_a_matching_claim_still_loads_and_the_header_is_read_first(tmp_path: Path) -> None:
    f = native(tmp_path / "n")
    assert load_sae(f).d_sae == 48
    edit_json(f / "config.json", d_in=8)
    with pytest.raises(SaeAuditError, match=r"W_enc has shape \[16, 48\], config says \[8, 48\]"):
        load_sae(f)


# --------------------------------------------------------------------------- A3: FIFOs and devices
@pytest.mark.parametrize("layout, name", [
    ("native", "model.safetensors"), ("native", "config.json"),
    ("saelens-topk", "cfg.json"), ("saelens-topk", "sae_weights.safetensors"), ("sparsify/layers.6", "cfg.json"),
])
def test_a_fifo_or_device_in_an_sae_folder_is_named_not_read(tmp_path: Path, layout: str, name: str) -> None:
    pipe = native(tmp_path / "p") if layout == "native" else copy(layout, tmp_path / "p")
    zero = native(tmp_path / "z") if layout == "native" else copy(layout, tmp_path / "z")
    (pipe / name).unlink()
    os.mkfifo(pipe / name)
    (zero / name).unlink()
    os.symlink("/dev/zero", zero / name)
    out = load_in_child([pipe, zero], timeout=60)
    assert f"{name} is a FIFO (named pipe), not a regular file" in out["msgs"][0]
    assert f"{name} is a character device, not a regular file" in out["msgs"][1]


# --------------------------------------------------------------------------- A4: bounds in SAEConfig
def test_image_size_and_norm_scale_bounds(tmp_path: Path) -> None:
    f = native(tmp_path / "n")
    edit_json(f / "config.json", image_size=1_000_000)
    with pytest.raises(SaeAuditError, match="image_size=1000000 is larger than 4096 pixels"):
        load_sae(f)
    for bad in (1e308, 5e-324, 1e13, 1e-13):
        edit_json(f / "config.json", image_size=224, normalisation="scalar", norm_scale=bad)
        with pytest.raises(SaeAuditError, match=r"norm_scale=.* is outside \[1e-12, 1e12\]"):
            load_sae(f)
    x = torch.full((3, 16), 1e4)
    for ok in (1e12, 1e-12):  # at the bounds every output stays finite in float32
        edit_json(f / "config.json", norm_scale=ok)
        sae = load_sae(f)
        assert torch.isfinite(sae(x)).all() and torch.isfinite(((sae(x) - x) * ok) ** 2).all()


# --------------------------------------------------------------------------- B5: one line per wrong type
@pytest.mark.parametrize("changes, fragment", [
    ({"metadata": [1, 2]}, "metadata must be a JSON object, got a list [1, 2]"),
    ({"metadata": {"sae_lens_version": "6x.1"}}, "metadata.sae_lens_version '6x.1' is not a version number"),
    ({"sae_lens_version": 6}, "sae_lens_version must be a string such as \"6.5.1\", got a number 6"),
    ({"activation_fn_kwargs": "k=4"}, "activation_fn_kwargs must be a JSON object, got a string 'k=4'"),
    ({"apply_b_dec_to_input": "false"}, "apply_b_dec_to_input must be true or false, got a string 'false'"),
    ({"architecture": ["topk"]}, "architecture must be a string, got a list"),
    ({"d_sae": "48"}, "d_sae must be a positive integer, got a string '48'"),
])
def test_saelens_config_types(tmp_path: Path, changes: dict, fragment: str) -> None:
    f = copy("saelens-topk", tmp_path / "s")
    edit_json(f / "cfg.json", **changes)
    with pytest.raises(SaeAuditError) as info:
        load_sae(f)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_pre6_saelens_with_bad_kwargs_type(tmp_path: Path) -> None:
    f = copy("saelens-v5-flat", tmp_path / "s")
    edit_json(f / "cfg.json", activation_fn_kwargs=[4])
    with pytest.raises(SaeAuditError, match="activation_fn_kwargs must be a JSON object, got a list"):
        load_sae(f)


@pytest.mark.parametrize("changes, fragment", [
    ({"num_latents": "64"}, "num_latents must be a positive integer, got a string '64'"),
    ({"skip_connection": "false"}, "skip_connection must be true or false, got a string"),
    ({"k": 4.0}, "k must be a positive integer, got a number 4.0"),
])
def test_sparsify_config_types(tmp_path: Path, changes: dict, fragment: str) -> None:
    f = copy("sparsify/layers.6", tmp_path / "s")
    edit_json(f / "cfg.json", **changes)
    with pytest.raises(SaeAuditError) as info:
        load_sae(f)
    assert fragment in str(info.value)


def test_json_nested_too_deeply_in_every_reader(tmp_path: Path) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    f = copy("saelens-topk", tmp_path / "saelens")
    (f / "cfg.json").write_text('{"metadata": ' + deep + "}")
    n = native(tmp_path / "native")
    (n / "config.json").write_text('{"d_sae": 48, "architecture": "topk", "x": ' + deep + "}")
    for folder in (f, n):
        with pytest.raises(SaeAuditError, match="nested too deeply"):
            load_sae(folder)


# --------------------------------------------------------------------------- B6: local paths are never hub ids
def test_local_paths_that_cannot_be_read_are_never_hub_ids(tmp_path: Path) -> None:
    (tmp_path / "saes").mkdir()
    os.symlink("loop", tmp_path / "saes" / "loop")
    os.symlink(tmp_path / "nowhere", tmp_path / "saes" / "dangling")
    os.mkfifo(tmp_path / "saes" / "pipe")
    (tmp_path / "saes" / "file").write_text("x")
    os.symlink("inner/x", tmp_path / "saes" / "inner")  # a loop in a parent component
    os.symlink("../inner", tmp_path / "saes" / "x")
    # The hub is reachable as far as huggingface_hub knows (not offline), at an address that refuses
    # connections: any attempt to treat these paths as repo ids would give a hub error instead.
    out = run_isolated(f"""
        import os
        os.chdir({str(tmp_path)!r})
        msgs = []
        for spec in ("saes/loop", "saes/dangling", "saes/pipe", "saes/file", "saes/inner/deeper"):
            try:
                resolve_sae_folder(spec)
                msgs.append("resolved")
            except SaeAuditError as exc:
                msgs.append(str(exc))
        report(msgs=msgs)
    """, imports="from sae_audit.sae.io import resolve_sae_folder\nfrom sae_audit.errors import SaeAuditError",
        env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")})
    loop, dangling, pipe, file, inner = out["msgs"]
    for msg in out["msgs"]:
        assert "Hugging Face" not in msg and "hub" not in msg, msg
    assert "'saes/loop' is a symbolic link that cannot be followed" in loop
    assert "'saes/dangling' is a symbolic link that cannot be followed" in dangling
    assert "'saes/pipe' is a FIFO (named pipe), not a folder" in pipe
    assert "'saes/file' is a file; pass the folder" in file
    assert "'saes/inner/deeper' cannot be examined (Too many levels of symbolic links)" in inner

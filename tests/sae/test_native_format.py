"""The native SAE folder: round trip, refusals, and loading through a local Hugging Face cache."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import stat
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae_audit.errors import SaeAuditError
from sae_audit.sae import SAEConfig, TopKSAE, load_sae, save_sae


def trained_like(tmp_path, **kw):
    sae = TopKSAE(SAEConfig(d_in=6, d_sae=12, k=3, hook_point="block.1", tokens="patch", **kw), seed=2)
    with torch.no_grad():
        sae.b_enc.normal_(generator=torch.Generator().manual_seed(0))
    return sae, save_sae(sae, tmp_path / "sae")


def test_round_trip_is_exact_and_files_are_shareable(tmp_path):
    sae, folder = trained_like(tmp_path, lambda_ratio=0.02)
    back = load_sae(folder)
    assert back.config == sae.config
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(back, name), getattr(sae, name))
    x = torch.randn(5, 6)
    torch.testing.assert_close(back(x), sae(x))
    # Written by the library's own safetensors reader, with the field's names.
    tensors = load_file(folder / "model.safetensors")
    assert tensors["W_enc"].shape == (6, 12) and tensors["W_dec"].shape == (12, 6)
    assert json.loads((folder / "config.json").read_text())["schema_version"] == 1
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert stat.S_IMODE((folder / "model.safetensors").stat().st_mode) == 0o644


def test_existing_folder_needs_overwrite(tmp_path):
    _, folder = trained_like(tmp_path)
    with pytest.raises(SaeAuditError, match="`overwrite`"):  # library errors name parameters, not flags
        save_sae(TopKSAE(SAEConfig(d_in=6, d_sae=12, k=3)), folder)
    assert load_sae(folder).config.hook_point == "block.1"  # untouched


def test_refusals(tmp_path):
    _, folder = trained_like(tmp_path)
    bad = tmp_path / "bad"

    def variant(edit_cfg=None, edit_tensors=None, raw_weights=None):
        shutil.rmtree(bad, ignore_errors=True)
        shutil.copytree(folder, bad)
        if edit_cfg is not None:
            (bad / "config.json").write_text(edit_cfg(json.loads((bad / "config.json").read_text())))
        if edit_tensors is not None:
            t = load_file(bad / "model.safetensors")
            edit_tensors(t)
            save_file(t, bad / "model.safetensors")
        if raw_weights is not None:
            (bad / "model.safetensors").write_bytes(raw_weights)
        return bad

    with pytest.raises(SaeAuditError, match="not valid JSON"):
        load_sae(variant(edit_cfg=lambda c: "{not json"))
    with pytest.raises(SaeAuditError, match="missing required keys: k"):
        load_sae(variant(edit_cfg=lambda c: json.dumps({k: v for k, v in c.items() if k != "k"})))
    with pytest.raises(SaeAuditError, match="larger than d_sae"):
        load_sae(variant(edit_cfg=lambda c: json.dumps({**c, "k": 99})))
    with pytest.raises(SaeAuditError, match="unknown keys: colour"):
        load_sae(variant(edit_cfg=lambda c: json.dumps({**c, "colour": "red"})))
    with pytest.raises(SaeAuditError, match="W_dec has shape"):
        load_sae(variant(edit_tensors=lambda t: t.update(W_dec=torch.zeros(12, 7))))
    with pytest.raises(SaeAuditError, match="NaN"):
        load_sae(variant(edit_tensors=lambda t: t["b_enc"].__setitem__(0, float("nan"))))
    with pytest.raises(SaeAuditError, match="dtype"):
        load_sae(variant(edit_tensors=lambda t: t.update(b_dec=torch.zeros(6, dtype=torch.int64))))
    # A pickle (which could run code when unpickled) where safetensors was expected is refused, never unpickled.
    with pytest.raises(SaeAuditError, match="never unpickles"):
        load_sae(variant(raw_weights=pickle.dumps({"W_enc": torch.zeros(6, 12)})))
    with pytest.raises(SaeAuditError, match="does not exist"):
        load_sae(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SaeAuditError, match="not an SAE folder"):
        load_sae(tmp_path / "empty")


def _cache_repo(cache, repo_id: str, files: dict[str, bytes], commit: str = "a" * 40):
    """Write ``files`` into huggingface_hub's real cache layout (blobs, snapshots, refs)."""
    import hashlib

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    for rel, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)


def test_load_by_hub_id_and_subfolder_offline_from_a_warm_cache(tmp_path):
    sae, folder = trained_like(tmp_path)
    files = {f"layer8/{p.name}": p.read_bytes() for p in folder.iterdir()}
    files["README.md"] = b"# SAEs\n"
    cache = tmp_path / "hub"
    _cache_repo(cache, "someone/dino-saes", files)
    code = (
        "import sys, torch; from sae_audit.sae import load_sae; from sae_audit.errors import SaeAuditError\n"
        "s = load_sae('someone/dino-saes/layer8')\n"
        "print(s.config.hook_point, float(s.b_enc.sum()))\n"
        "try:\n    load_sae('someone/other-saes')\nexcept SaeAuditError as e:\n    print('ERR', e)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    first, err = proc.stdout.strip().splitlines()
    hook, total = first.split()
    assert hook == "block.1" and float(total) == pytest.approx(float(sae.b_enc.detach().sum()), rel=1e-6)
    assert err.startswith("ERR") and "not in the local Hugging Face cache" in err

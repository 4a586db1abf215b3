"""saev checkpoints: each header generation read as the saev code of its time encoded, and hostile sae.pt files.

tests/fixtures/saev_eras/ holds checkpoints written to the layout of saev's
``dump`` between 2025-04-28 and 2025-07-31 (header schema 1) by
tests/fixtures/make_saev_era_fixtures.py, with the era's own encodings of fixed
inputs computed by a plain loop.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sae_audit.errors import SaeAuditError
from sae_audit.sae import load_sae, save_sae
from tests.isolated import run_isolated

FIX = Path(__file__).resolve().parents[1] / "fixtures"
ERAS = FIX / "saev_eras"


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_header(path: Path, edit) -> None:
    header, rest = path.read_bytes().split(b"\n", 1)
    new = edit(json.loads(header))
    path.write_bytes((new if isinstance(new, str) else json.dumps(new)).encode() + b"\n" + rest)


@pytest.mark.parametrize("name, arch, b_dec_in", [
    ("schema1-relu", "relu", True),
    ("schema1-topk", "topk", True),
    ("schema1-topk-after-e7ca004", "topk", False),
])
def test_schema1_checkpoints_encode_as_their_era_did(name, arch, b_dec_in, tmp_path):
    folder = ERAS / name
    era = json.loads((folder / "era.json").read_text())
    ref = load_file(str(folder / "reference.safetensors"))
    sae = load_sae(folder)
    assert sae.config.architecture == arch and sae.config.apply_b_dec_to_input is b_dec_in is era["subtract_b_dec"]
    assert sae.config.topk_relu is False or arch == "relu"
    codes = sae.encode(ref["x"])
    torch.testing.assert_close(codes.to_dense(), ref["codes"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.decode(codes), ref["x_hat"], atol=1e-5, rtol=1e-5)
    if b_dec_in:  # the data-mean b_dec matters: encoding without subtracting it gives other codes
        assert sae.b_dec.norm() > 5
    # saved in the native format, the SAE keeps the era's semantics
    again = load_sae(save_sae(sae, tmp_path / "native"))
    torch.testing.assert_close(again.encode(ref["x"]).to_dense(), ref["codes"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, when", [
    ("schema1-batchtopk", "saev schema 1, written between 2025-07-15 and 2025-07-31"),
    ("schema2-batchtopk-batch-level", "saev schema 2, written between 2025-07-31 and 2025-08-07"),
])
def test_batch_level_batchtopk_is_refused_with_a_way_out(name, when, tmp_path):
    with pytest.raises(SaeAuditError) as info:
        load_sae(ERAS / name)
    msg = str(info.value)
    assert when in msg and "top_k=5 largest values of a whole training batch" in msg and "\n" not in msg
    # The way out the message offers: the same file with "TopK" in its header loads as per-image Top-k.
    f = copy(ERAS / name, tmp_path / "copy")
    header, rest = (f / "sae.pt").read_bytes().split(b"\n", 1)
    (f / "sae.pt").write_bytes(header.replace(b'"BatchTopK"', b'"TopK"') + b"\n" + rest)
    sae = load_sae(f)
    assert sae.config.architecture == "topk" and sae.config.k == 5


def test_schema2_batchtopk_after_2025_08_07_is_per_sample(tmp_path):
    f = copy(ERAS / "schema2-batchtopk-batch-level", tmp_path / "s")
    edit_header(f / "sae.pt", lambda h: {**h, "commit": "00d07b7"})  # "add encode() helper": per-sample top_k
    sae = load_sae(f)
    assert sae.config.architecture == "topk" and not sae.config.apply_b_dec_to_input and sae.config.k == 5


# --------------------------------------------------------------------------- hostile sae.pt files
def test_a_huge_exp_factor_is_refused_before_allocating(tmp_path):
    f = copy(FIX / "reference_saes" / "saev-0.1.0", tmp_path / "s")
    edit_header(f / "sae.pt", lambda h: {**h, "exp_factor": 2**36})  # d_vit * exp_factor = 2**40
    g = copy(ERAS / "schema1-topk", tmp_path / "t")
    edit_header(g / "sae.pt", lambda h: {**h, "cfg": {**h["cfg"], "exp_factor": 1_875_000}})  # d_sae 3e7
    out = run_isolated(f"""
        msgs = []
        for folder in ({str(f)!r}, {str(g)!r}):
            try:
                load_sae(folder)
            except SaeAuditError as exc:
                msgs.append(str(exc))
        report(msgs=msgs)
    """, imports="from sae_audit.sae import load_sae\nfrom sae_audit.errors import SaeAuditError")
    assert "W_enc has shape [16, 48], config says [16, 1099511627776]" in out["msgs"][0]
    assert "W_enc has shape [16, 48], config says [16, 30000000]" in out["msgs"][1]
    assert out["peak_mb"] < 150, out


def test_sae_pt_that_is_a_fifo_or_dev_zero(tmp_path):
    pipe = copy(ERAS / "schema1-relu", tmp_path / "p")
    (pipe / "sae.pt").unlink()
    os.mkfifo(pipe / "sae.pt")
    zero = copy(ERAS / "schema1-relu", tmp_path / "z")
    (zero / "sae.pt").unlink()
    os.symlink("/dev/zero", zero / "sae.pt")
    out = run_isolated(f"""
        msgs = []
        for folder in ({str(pipe)!r}, {str(zero)!r}):
            try:
                load_sae(folder)
            except SaeAuditError as exc:
                msgs.append(str(exc))
        report(msgs=msgs)
    """, imports="from sae_audit.sae import load_sae\nfrom sae_audit.errors import SaeAuditError", timeout=60)
    assert "sae.pt is a FIFO (named pipe), not a regular file" in out["msgs"][0]
    assert "sae.pt is a character device, not a regular file" in out["msgs"][1]


def test_weights_must_be_a_stored_torch_archive(tmp_path):
    f = copy(ERAS / "schema1-relu", tmp_path / "s")
    header, rest = (f / "sae.pt").read_bytes().split(b"\n", 1)
    src = zipfile.ZipFile(io.BytesIO(rest))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:  # what torch.save never writes
        for info in src.infolist():
            z.writestr(info.filename, src.read(info.filename))
    (f / "sae.pt").write_bytes(header + b"\n" + out.getvalue())
    with pytest.raises(SaeAuditError, match="compressed entries"):
        load_sae(f)


def test_header_types_and_nesting(tmp_path):
    f = copy(FIX / "reference_saes" / "saev-0.1.0", tmp_path / "s")
    edit_header(f / "sae.pt", lambda h: {**h, "d_vit": "16"})
    with pytest.raises(SaeAuditError, match="d_vit must be a positive integer, got a string '16'"):
        load_sae(f)
    edit_header(f / "sae.pt", lambda h: {"schema": True, "cfg": {}})
    with pytest.raises(SaeAuditError, match="schema must be an integer, got true/false True"):
        load_sae(f)
    edit_header(f / "sae.pt", lambda h: {"schema": 2, "cfg": {"d_vit": 16, "exp_factor": 3,
                                                               "activation": {"cls": "TopK", "params": [5]}}})
    with pytest.raises(SaeAuditError, match="params must be a JSON object, got a list"):
        load_sae(f)
    deep = "[" * 100_000 + "]" * 100_000
    edit_header(f / "sae.pt", lambda h: '{"schema": 2, "cfg": ' + deep + "}")
    with pytest.raises(SaeAuditError, match="nested too deeply"):
        load_sae(f)


def test_a_header_without_an_activation_is_refused(tmp_path):
    f = copy(ERAS / "schema1-relu", tmp_path / "s")
    edit_header(f / "sae.pt", lambda h: {**h, "cls": "JumpRelu"})
    with pytest.raises(SaeAuditError, match="names no activation .*cls is 'JumpRelu'"):
        load_sae(f)

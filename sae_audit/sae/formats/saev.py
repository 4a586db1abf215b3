"""saev checkpoints (OSU-NLP-Group/saev): a folder with ``sae.pt``.

``sae.pt`` is one line of JSON (the header), then a ``torch.save``'d state dict
(``W_enc [d_vit, d_sae]``, ``b_enc``, ``W_dec [d_sae, d_vit]``, ``b_dec``). The
state dict is read with ``torch.load(weights_only=True)``: a file that needs
code to unpickle is refused.

Two header generations, each read with the semantics of the saev version that
writes it:

- no ``schema`` key (saev 0.1.0 on PyPI): the header is the config itself
  (``d_vit``, ``exp_factor``, ...); the SAE is ReLU and its forward subtracts
  ``b_dec`` before encoding: ``z = relu((x - b_dec) @ W_enc + b_enc)``.
- ``schema`` 1 or 2 (saev on GitHub): ``cfg.activation`` names ``Relu``,
  ``TopK`` or ``BatchTopK`` (``{"cls": ..., "params": {"top_k": k}}``, or the
  header's ``cls`` in schema 1). ``encode`` does *not* subtract ``b_dec``, and
  TopK keeps the raw selected values (no ReLU); saev's BatchTopK activation
  also selects per sample at inference. So: ``apply_b_dec_to_input=False``,
  ``topk_relu=False``. A selected value can then be negative: it still
  enters the reconstruction, but the audit's firing statistics count only
  values > 0 as firing.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import torch

from sae_audit.errors import SaeAuditError
from sae_audit.sae.config import SAEConfig
from sae_audit.sae.formats.common import positive_int

FILE_NAME = "sae.pt"
MAX_HEADER = 1 << 20


def detect(folder: Path) -> bool:
    return (folder / FILE_NAME).is_file()


def _split(path: Path) -> tuple[dict, bytes]:
    with open(path, "rb") as fh:
        line = fh.readline(MAX_HEADER)
        rest = fh.read()
    try:
        header = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise SaeAuditError(
            f"{path} does not start with a JSON header line, so it is not a saev checkpoint "
            "(sae-audit does not unpickle arbitrary .pt files)"
        ) from None
    if not isinstance(header, dict):
        raise SaeAuditError(f"{path}: the header line must be a JSON object")
    return header, rest


def _config(header: dict, source) -> SAEConfig:
    schema = header.get("schema")
    if schema is None:
        cfg = header
        kind, params, b_dec_in = "Relu", {}, True
    elif schema in (1, 2):
        cfg = header.get("cfg")
        if not isinstance(cfg, dict):
            raise SaeAuditError(f"{source}: header schema {schema} lacks the 'cfg' object")
        act = cfg.get("activation")
        if isinstance(act, dict):
            kind, params = act.get("cls"), act.get("params") or {}
        elif schema == 1 and header.get("cls") in ("Relu", "TopK", "BatchTopK"):
            kind, params = header["cls"], {"top_k": cfg.get("top_k", 32)}
        else:
            kind, params = "Relu", {}
        b_dec_in = False
    else:
        raise SaeAuditError(f"{source}: saev header schema {schema!r} is not supported (1 or 2, or none)")
    d_vit = positive_int(cfg, "d_vit", source)
    exp = positive_int(cfg, "exp_factor", source)
    d_sae = d_vit * exp
    if kind == "Relu":
        return SAEConfig(d_in=d_vit, d_sae=d_sae, k=d_sae, architecture="relu", apply_b_dec_to_input=b_dec_in)
    if kind in ("TopK", "BatchTopK"):
        k = positive_int(params, "top_k", source)
        return SAEConfig(d_in=d_vit, d_sae=d_sae, k=k, architecture="topk", apply_b_dec_to_input=False,
                         topk_relu=False)
    raise SaeAuditError(f"{source}: saev activation {kind!r} is not supported (Relu, TopK, BatchTopK)")


def read(folder: Path):
    from sae_audit.sae.io import sae_from_tensors

    path = folder / FILE_NAME
    header, rest = _split(path)
    config = _config(header, path)
    try:
        state = torch.load(io.BytesIO(rest), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as exc:
        raise SaeAuditError(
            f"{path}: the weights after the header are not a plain tensor state dict; refused without "
            f"unpickling ({str(exc).splitlines()[0][:200]})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SaeAuditError(f"{path}: the weights after the header are not a tensor state dict")
    return sae_from_tensors(config, dict(state), path)

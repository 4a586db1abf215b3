"""EleutherAI sparsify folders: ``cfg.json`` + ``sae.safetensors``.

Tensors (``SparseCoder.save_to_disk``): ``encoder.weight [d_sae, d_in]``,
``encoder.bias [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``. sparsify
encodes ``topk(relu(encoder(x - b_dec)), k)`` and decodes
``top_acts @ W_dec[top_indices] + b_dec``: the Top-k SAE of SPEC section 1 with
``W_enc = encoder.weight.T`` (ReLU before or after selection gives the same
values). ``d_in`` comes from ``cfg.json`` (newer sparsify) or the tensors; the
hook point from the folder name (``layers.6`` -> ``block.6``). Refused: the
``groupmax`` activation, skip connections and transcoders.
"""

from __future__ import annotations

import os
from pathlib import Path

from sae_audit.errors import SaeAuditError
from sae_audit.sae.config import SAEConfig
from sae_audit.sae.formats.common import get_bool, get_str, hook_from_name, positive_int, read_json

CFG_NAME = "cfg.json"
WEIGHTS_NAME = "sae.safetensors"


def detect(folder: Path) -> bool:
    """``cfg.json`` beside ``sae.safetensors`` (either may be a non-regular file: ``read`` says so)."""
    return os.path.lexists(folder / CFG_NAME) and os.path.lexists(folder / WEIGHTS_NAME)


def read(folder: Path):
    """Read a sparsify folder; the weights' header is checked against ``cfg.json`` before any tensor is read.

    ``num_latents`` (when present and not 0, sparsify's "use the expansion
    factor") must be a positive integer; otherwise ``d_sae = expansion_factor * d_in``.

    Raises:
        SaeAuditError: a missing, non-regular, oversized or invalid ``cfg.json``
            (keys of the wrong JSON type are named with the type they have); an
            unsupported activation, skip connection or transcoder; weights that
            do not match the config.
    """
    from sae_audit.sae.io import check_shapes, read_safetensors, safetensors_shapes, sae_from_tensors

    source = folder / CFG_NAME
    weights = folder / WEIGHTS_NAME
    cfg = read_json(source)
    activation = get_str(cfg, "activation", "topk", source)
    if activation != "topk":
        raise SaeAuditError(f"{source}: sparsify activation {activation!r} is not supported (only topk)")
    if get_bool(cfg, "skip_connection", False, source):
        raise SaeAuditError(f"{source}: sparsify SAEs with a skip connection are not supported")
    if get_bool(cfg, "transcode", False, source):
        raise SaeAuditError(f"{source}: sparsify transcoders are not supported (they map one module's "
                            "input to its output, not one activation to itself)")
    k = positive_int(cfg, "k", source)
    shapes = safetensors_shapes(weights)
    if "encoder.weight" not in shapes:
        raise SaeAuditError(f"{weights} lacks tensors: encoder.weight")
    enc_shape = shapes.pop("encoder.weight")
    if len(enc_shape) != 2:
        raise SaeAuditError(f"{weights}: encoder.weight must be [d_sae, d_in], got {list(enc_shape)}")
    d_in = positive_int(cfg, "d_in", source) if cfg.get("d_in") is not None else int(enc_shape[1])
    if cfg.get("num_latents") in (None, 0):
        d_sae = positive_int(cfg, "expansion_factor", source) * d_in
    else:
        d_sae = positive_int(cfg, "num_latents", source)
    if tuple(enc_shape) != (d_sae, d_in):
        raise SaeAuditError(
            f"{weights}: encoder.weight has shape {list(enc_shape)}, cfg.json says [{d_sae}, {d_in}]"
        )
    config = SAEConfig(d_in=d_in, d_sae=d_sae, k=k, hook_point=hook_from_name(folder.name))
    shapes["W_enc"] = (d_in, d_sae)
    if "encoder.bias" in shapes:
        shapes["b_enc"] = shapes.pop("encoder.bias")
    check_shapes(config, shapes, weights)  # before a byte of tensor data is read
    tensors = read_safetensors(weights)
    tensors["W_enc"] = tensors.pop("encoder.weight").T.contiguous()
    if "encoder.bias" in tensors:
        tensors["b_enc"] = tensors.pop("encoder.bias")
    return sae_from_tensors(config, tensors, weights)

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

from pathlib import Path

from sae_audit.errors import SaeAuditError
from sae_audit.sae.config import SAEConfig
from sae_audit.sae.formats.common import hook_from_name, positive_int, read_json

CFG_NAME = "cfg.json"
WEIGHTS_NAME = "sae.safetensors"


def detect(folder: Path) -> bool:
    return (folder / CFG_NAME).is_file() and (folder / WEIGHTS_NAME).exists()


def read(folder: Path):
    from sae_audit.sae.io import read_safetensors, sae_from_tensors

    source = folder / CFG_NAME
    cfg = read_json(source)
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise SaeAuditError(f"{source}: sparsify activation {activation!r} is not supported (only topk)")
    if cfg.get("skip_connection"):
        raise SaeAuditError(f"{source}: sparsify SAEs with a skip connection are not supported")
    if cfg.get("transcode"):
        raise SaeAuditError(f"{source}: sparsify transcoders are not supported (they map one module's "
                            "input to its output, not one activation to itself)")
    k = positive_int(cfg, "k", source)
    tensors = read_safetensors(folder / WEIGHTS_NAME)
    if "encoder.weight" not in tensors:
        raise SaeAuditError(f"{folder / WEIGHTS_NAME} lacks tensors: encoder.weight")
    enc = tensors.pop("encoder.weight")
    if enc.ndim != 2:
        raise SaeAuditError(f"{folder / WEIGHTS_NAME}: encoder.weight must be [d_sae, d_in], got {list(enc.shape)}")
    d_in = positive_int(cfg, "d_in", source) if "d_in" in cfg else int(enc.shape[1])
    d_sae = cfg.get("num_latents") or (positive_int(cfg, "expansion_factor", source) * d_in)
    if tuple(enc.shape) != (d_sae, d_in):
        raise SaeAuditError(
            f"{folder / WEIGHTS_NAME}: encoder.weight has shape {list(enc.shape)}, cfg.json says "
            f"[{d_sae}, {d_in}]"
        )
    tensors["W_enc"] = enc.T.contiguous()
    if "encoder.bias" in tensors:
        tensors["b_enc"] = tensors.pop("encoder.bias")
    config = SAEConfig(d_in=d_in, d_sae=int(d_sae), k=k, hook_point=hook_from_name(folder.name))
    return sae_from_tensors(config, tensors, folder / WEIGHTS_NAME)

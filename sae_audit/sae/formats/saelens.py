"""SAELens folders: ``cfg.json`` + ``sae_weights.safetensors``.

Follows SAELens 6 (``SAE.save_model`` / ``SAE.load_from_disk``) and its
handling of pre-6 configs (flat keys ``hook_point``/``hook_name``,
``activation_fn_str`` with ``activation_fn_kwargs.k`` for Top-k,
``normalize_activations`` as a bool):

- ``topk`` -> Top-k with ReLU after selection; ``rescale_acts_by_decoder_norm``
  (pre-activations multiplied by the decoder row norms before selection,
  activations divided by them before decoding) is folded exactly into
  ``W_enc``, ``b_enc`` and ``W_dec``, so the codes equal SAELens' ``encode``;
- ``jumprelu`` -> :class:`~sae_audit.sae.jumprelu.JumpReLUSAE` (SAELens also
  saves BatchTopK SAEs this way, with the learnt threshold);
- ``standard`` (activation ``relu``) -> :class:`~sae_audit.sae.relu.ReLUSAE`;
- ``apply_b_dec_to_input`` is kept as a config flag;
- ``normalize_activations``: ``none``; ``expected_average_only_in`` runs no
  input scaling at inference in SAELens (its trainer folds the factor into the
  weights), so none here either. ``constant_norm_rescale``, ``layer_norm`` and
  ``covariance_whitening`` are refused, as are other architectures (gated,
  matryoshka, transcoders, ...), ``hook_z`` reshaping and fine-tuning scaling.
- ``metadata.hook_name`` becomes our hook point when it names a block output
  (:func:`~sae_audit.sae.formats.common.hook_from_name`); ``metadata.model_name``
  the model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sae_audit.errors import SaeAuditError
from sae_audit.sae.config import SAEConfig
from sae_audit.sae.formats.common import hook_from_name, positive_int, read_json

CFG_NAME = "cfg.json"
WEIGHTS_NAME = "sae_weights.safetensors"
SUPPORTED_NORMALISATIONS = ("none", "expected_average_only_in")


def detect(folder: Path) -> bool:
    return (folder / CFG_NAME).is_file() and (folder / WEIGHTS_NAME).exists()


def _normalise_cfg(cfg: dict) -> dict:
    """Pre-6 flat configs to the 6.x keys (as SAELens' own loader does)."""
    version = cfg.get("sae_lens_version") or (cfg.get("metadata") or {}).get("sae_lens_version")
    major = None
    if isinstance(version, str) and version[:1].isdigit():
        major = int(version.split(".")[0])
    if major is not None and major >= 6:
        return cfg
    renames = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index",
               "activation_fn_str": "activation_fn"}
    new = {renames.get(k, k): v for k, v in cfg.items()}
    new.setdefault("apply_b_dec_to_input", True)
    new.setdefault("architecture", "standard")
    new.setdefault("activation_fn", "relu")
    kwargs = new.get("activation_fn_kwargs") or {}
    if new.get("activation_fn") == "topk" and kwargs.get("k") is not None:
        new["architecture"] = "topk"
        new["k"] = kwargs["k"]
    if isinstance(new.get("normalize_activations"), bool):
        new["normalize_activations"] = "expected_average_only_in" if new["normalize_activations"] else "none"
    if new.get("normalize_activations") is None:
        new["normalize_activations"] = "none"
    new.setdefault("metadata", {k: new[k] for k in ("model_name", "hook_name") if k in new})
    return new


def read(folder: Path):
    from sae_audit.sae.io import read_safetensors, sae_from_tensors

    source = folder / CFG_NAME
    cfg = _normalise_cfg(read_json(source))
    d_in = positive_int(cfg, "d_in", source)
    d_sae = positive_int(cfg, "d_sae", source)
    arch = cfg.get("architecture")
    if arch is None:
        raise SaeAuditError(f"{source} is missing the key 'architecture'")
    norm = cfg.get("normalize_activations", "none")
    if norm not in SUPPORTED_NORMALISATIONS:
        raise SaeAuditError(
            f"{source}: normalize_activations={norm!r} (a per-input normalisation) is not supported; "
            f"sae-audit reads SAELens SAEs with {' or '.join(SUPPORTED_NORMALISATIONS)}"
        )
    if cfg.get("reshape_activations", "none") not in ("none", None):
        raise SaeAuditError(f"{source}: reshape_activations={cfg['reshape_activations']!r} (attention-head SAEs) "
                            "is not supported; sae-audit reads block outputs")
    if cfg.get("finetuning_scaling_factor"):
        raise SaeAuditError(f"{source}: finetuning_scaling_factor is not supported")
    tensors = read_safetensors(folder / WEIGHTS_NAME)
    kw: dict = {}
    if arch == "topk":
        k = positive_int(cfg, "k", source)
        if cfg.get("activation_fn", "topk") not in ("topk", None, "relu"):
            raise SaeAuditError(f"{source}: topk SAE with activation_fn={cfg['activation_fn']!r} is not supported")
        kw = {"architecture": "topk", "k": k}
    elif arch == "jumprelu":
        kw = {"architecture": "jumprelu", "k": d_sae}
        if "threshold" not in tensors and "log_threshold" in tensors:
            tensors["threshold"] = tensors.pop("log_threshold").float().exp()
    elif arch == "standard":
        if cfg.get("activation_fn", "relu") != "relu":
            raise SaeAuditError(
                f"{source}: standard SAE with activation_fn={cfg['activation_fn']!r} is not supported "
                "(only relu)"
            )
        kw = {"architecture": "relu", "k": d_sae}
    else:
        raise SaeAuditError(
            f"{source}: SAELens architecture {arch!r} is not supported (supported: topk, jumprelu "
            "(including BatchTopK saved for inference), standard/ReLU)"
        )
    meta = cfg.get("metadata") or {}
    hook_name = meta.get("hook_name") or cfg.get("hook_name")
    config = SAEConfig(
        d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        model=meta.get("model_name") or cfg.get("model_name"), hook_point=hook_from_name(hook_name), **kw,
    )
    sae = sae_from_tensors(config, tensors, folder / WEIGHTS_NAME)
    if arch == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
        with torch.no_grad():
            norms = sae.W_dec.norm(dim=1)
            if not (norms > 0).all():
                raise SaeAuditError(f"{folder / WEIGHTS_NAME}: a decoder row has zero norm")
            sae.W_enc.mul_(norms)
            sae.b_enc.mul_(norms)
            sae.W_dec.div_(norms[:, None])
    return sae

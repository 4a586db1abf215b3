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

import os
import re
from pathlib import Path

import torch

from sae_audit.errors import SaeAuditError
from sae_audit.sae.config import SAEConfig
from sae_audit.safe_files import json_type
from sae_audit.sae.formats.common import get_bool, get_object, get_str, hook_from_name, positive_int, read_json

CFG_NAME = "cfg.json"
WEIGHTS_NAME = "sae_weights.safetensors"
SUPPORTED_NORMALISATIONS = ("none", "expected_average_only_in")


def detect(folder: Path) -> bool:
    """``cfg.json`` beside ``sae_weights.safetensors`` (either may be a non-regular file: ``read`` says so)."""
    return os.path.lexists(folder / CFG_NAME) and os.path.lexists(folder / WEIGHTS_NAME)


# "major.minor[.patch...]" with an optional PEP 440 / semver suffix ("rc1", ".post1", "-beta", "+local").
_VERSION = re.compile(r"^\s*(\d+)(?:\.\d+)+(?:(?:a|b|rc|\.post|\.dev|-|\+)[A-Za-z0-9.+-]*)?\s*$")


def _major_version(cfg: dict, source) -> int | None:
    """The major version of ``sae_lens_version`` (top level or in ``metadata``); ``None`` when absent.

    Raises:
        SaeAuditError: the version is not a string, or not a version number (``"6x.1"``).
    """
    version = cfg.get("sae_lens_version")
    where = "sae_lens_version"
    if version is None:
        version = get_object(cfg, "metadata", source).get("sae_lens_version")
        where = "metadata.sae_lens_version"
    if version is None:
        return None
    if not isinstance(version, str):
        raise SaeAuditError(f"{source}: {where} must be a string such as \"6.5.1\", "
                            f"got {json_type(version)} {version!r}")
    m = _VERSION.match(version)
    if m is None:
        raise SaeAuditError(f"{source}: {where} {version!r} is not a version number such as \"6.5.1\"")
    return int(m.group(1))


def _normalise_cfg(cfg: dict, source) -> dict:
    """Pre-6 flat configs to the 6.x keys (as SAELens' own loader does).

    Raises:
        SaeAuditError: ``metadata`` or ``activation_fn_kwargs`` is not a JSON
            object, or ``sae_lens_version`` is not a version number.
    """
    major = _major_version(cfg, source)
    get_object(cfg, "metadata", source)
    get_object(cfg, "activation_fn_kwargs", source)
    if major is not None and major >= 6:
        return cfg
    renames = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index",
               "activation_fn_str": "activation_fn"}
    new = {renames.get(k, k): v for k, v in cfg.items()}
    new.setdefault("apply_b_dec_to_input", True)
    new.setdefault("architecture", "standard")
    new.setdefault("activation_fn", "relu")
    kwargs = get_object(new, "activation_fn_kwargs", source)
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
    """Read a SAELens folder; the weights' header is checked against ``cfg.json`` before any tensor is read.

    Raises:
        SaeAuditError: a missing, non-regular, oversized or invalid ``cfg.json``
            (including keys of the wrong JSON type, named with the type they
            have); an unsupported architecture, activation or normalisation;
            weights that do not match the config.
    """
    from sae_audit.sae.io import check_shapes, read_safetensors, safetensors_shapes, sae_from_tensors

    source = folder / CFG_NAME
    weights = folder / WEIGHTS_NAME
    cfg = _normalise_cfg(read_json(source), source)
    d_in = positive_int(cfg, "d_in", source)
    d_sae = positive_int(cfg, "d_sae", source)
    arch = get_str(cfg, "architecture", None, source)
    if arch is None:
        raise SaeAuditError(f"{source} is missing the key 'architecture'")
    norm = get_str(cfg, "normalize_activations", "none", source)
    if norm not in SUPPORTED_NORMALISATIONS:
        raise SaeAuditError(
            f"{source}: normalize_activations={norm!r} (a per-input normalisation) is not supported; "
            f"sae-audit reads SAELens SAEs with {' or '.join(SUPPORTED_NORMALISATIONS)}"
        )
    reshape = get_str(cfg, "reshape_activations", "none", source)
    if reshape != "none":
        raise SaeAuditError(f"{source}: reshape_activations={reshape!r} (attention-head SAEs) "
                            "is not supported; sae-audit reads block outputs")
    if cfg.get("finetuning_scaling_factor"):
        raise SaeAuditError(f"{source}: finetuning_scaling_factor is not supported")
    activation_fn = get_str(cfg, "activation_fn", None, source)
    kw: dict = {}
    if arch == "topk":
        k = positive_int(cfg, "k", source)
        if activation_fn not in ("topk", None, "relu"):
            raise SaeAuditError(f"{source}: topk SAE with activation_fn={activation_fn!r} is not supported")
        kw = {"architecture": "topk", "k": k}
    elif arch == "jumprelu":
        kw = {"architecture": "jumprelu", "k": d_sae}
    elif arch == "standard":
        if activation_fn not in ("relu", None):
            raise SaeAuditError(
                f"{source}: standard SAE with activation_fn={activation_fn!r} is not supported (only relu)"
            )
        kw = {"architecture": "relu", "k": d_sae}
    else:
        raise SaeAuditError(
            f"{source}: SAELens architecture {arch!r} is not supported (supported: topk, jumprelu "
            "(including BatchTopK saved for inference), standard/ReLU)"
        )
    meta = get_object(cfg, "metadata", source)
    hook_name = meta.get("hook_name") or cfg.get("hook_name")
    config = SAEConfig(
        d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=get_bool(cfg, "apply_b_dec_to_input", True, source),
        model=meta.get("model_name") or cfg.get("model_name"),
        hook_point=hook_from_name(hook_name if isinstance(hook_name, str) else None), **kw,
    )
    rescale = get_bool(cfg, "rescale_acts_by_decoder_norm", False, source)
    shapes = safetensors_shapes(weights)
    if arch == "jumprelu" and "threshold" not in shapes and "log_threshold" in shapes:
        shapes["threshold"] = shapes.pop("log_threshold")
    check_shapes(config, shapes, weights)  # before a byte of tensor data is read
    tensors = read_safetensors(weights)
    if arch == "jumprelu" and "threshold" not in tensors and "log_threshold" in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").float().exp()
    sae = sae_from_tensors(config, tensors, weights)
    if arch == "topk" and rescale:
        with torch.no_grad():
            norms = sae.W_dec.norm(dim=1)
            if not (norms > 0).all():
                raise SaeAuditError(f"{weights}: a decoder row has zero norm")
            sae.W_enc.mul_(norms)
            sae.b_enc.mul_(norms)
            sae.W_dec.div_(norms[:, None])
    return sae

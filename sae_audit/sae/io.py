"""Saving and loading SAEs: the native folder format and ``load_sae``.

Native format (schema version in ``config.json``)::

    SAE_DIR/
      config.json          SAEConfig as JSON (architecture, d_in, d_sae, k,
                           lambdas, hook point, token set, model, normalisation,
                           schema_version)
      model.safetensors    W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in], float32
                           (+ threshold [d_sae] for jumprelu)
      README.md            model card (sae_audit.sae.card), optional for save_sae

Writing is :meth:`sae_audit.sae.base.SAE.write_folder`.

Readers for other formats plug in through the ``sae_audit_register_sae_formats``
hook (:mod:`sae_audit.sae.registry`); the built-in plugin registers the native
reader (:func:`detect_native`, :func:`read_native`) first, then SAELens, saev
and sparsify (:mod:`sae_audit.sae.formats`). :func:`load_sae` tries them in order.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from sae_audit.errors import SaeAuditError
from sae_audit.sae.base import CONFIG_NAME, SAE, WEIGHTS_NAME
from sae_audit.sae.config import SAEConfig
from sae_audit.sae.registry import read_sae_folder, sae_formats
from sae_audit.sae.topk import TopKSAE


def save_sae(sae: SAE, out_dir: str | os.PathLike, readme: str | None = None, overwrite: bool = False) -> Path:
    """Write ``sae`` to ``out_dir`` in the native format, atomically (:meth:`SAE.write_folder`).

    Unlike :meth:`SAE.save_pretrained`, no model card is written unless ``readme`` is given.

    Raises:
        SaeAuditError: ``out_dir`` exists and is not empty and ``overwrite`` is
            false, another process writes it, or a file in the way was not written
            by sae-audit.
    """
    return sae.write_folder(out_dir, readme=readme, overwrite=overwrite)


def detect_native(folder: Path) -> bool:
    """``config.json`` beside ``model.safetensors``; a broken config is the native reader's to report."""
    if not (folder / CONFIG_NAME).is_file() or not (folder / WEIGHTS_NAME).exists():
        return False
    try:
        cfg = json.loads((folder / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return True  # unreadable JSON: let the native reader say so precisely
    return isinstance(cfg, dict) and "d_sae" in cfg and "architecture" in cfg


def read_native(folder: Path) -> TopKSAE:
    """Read a native SAE folder (``config.json`` + ``model.safetensors``).

    Raises:
        SaeAuditError: the config is not valid JSON or not a valid SAE config, or the weights do not match it.
    """
    try:
        raw = json.loads((folder / CONFIG_NAME).read_text())
    except ValueError as exc:
        raise SaeAuditError(f"{folder / CONFIG_NAME} is not valid JSON: {exc}") from None
    config = SAEConfig.from_dict(raw)
    return sae_from_tensors(config, read_safetensors(folder / WEIGHTS_NAME), folder / WEIGHTS_NAME)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; anything else (a pickle, a truncated file) is refused.

    Raises:
        SaeAuditError: the file is missing or not safetensors (it is never unpickled).
    """
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SaeAuditError(
            f"{path} is not a readable safetensors file ({exc}); sae-audit never unpickles weights"
        ) from None


def sae_from_tensors(config: SAEConfig, tensors: dict[str, torch.Tensor], source) -> TopKSAE:
    """Build the SAE of ``config`` from named tensors, checking every one.

    Args:
        tensors: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``,
            ``b_dec [d_in]`` (any float dtype; stored as float32), plus ``threshold
            [d_sae]`` for ``jumprelu``.
        source: named in error messages.
    Raises:
        SaeAuditError: a tensor missing, of the wrong shape, not floating point, or
            holding NaN/inf.
    """
    from sae_audit.sae.architectures import build_sae, extra_params

    expected = {
        "W_enc": (config.d_in, config.d_sae),
        "b_enc": (config.d_sae,),
        "W_dec": (config.d_sae, config.d_in),
        "b_dec": (config.d_in,),
        **extra_params(config),
    }
    missing = [n for n in expected if n not in tensors]
    if missing:
        raise SaeAuditError(f"{source} lacks tensors: {', '.join(missing)}")
    sae = build_sae(config, seed=None)
    for name, shape in expected.items():
        t = tensors[name]
        if tuple(t.shape) != shape:
            raise SaeAuditError(
                f"{source}: {name} has shape {list(t.shape)}, config says {list(shape)}"
            )
        if not t.is_floating_point():
            raise SaeAuditError(f"{source}: {name} has dtype {t.dtype}, expected a float type")
        if not torch.isfinite(t).all():
            raise SaeAuditError(f"{source}: {name} contains NaN or infinite values")
        getattr(sae, name).data.copy_(t.to(torch.float32))
    return sae


def _resolve_hub(spec: str, revision: str | None) -> Path:
    """Download (or find in the cache) ``org/name[/subfolder...]`` through huggingface_hub."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    parts = spec.strip("/").split("/")
    repo_id, sub = "/".join(parts[:2]), "/".join(parts[2:])
    patterns = [f"{sub}/*"] if sub else None
    try:
        root = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except LocalEntryNotFoundError:
        raise SaeAuditError(
            f"SAE {spec!r} is not in the local Hugging Face cache and the hub cannot be reached "
            "(HF_HUB_OFFLINE is set or there is no network); pass a local folder instead"
        ) from None
    except (RepositoryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        raise SaeAuditError(f"could not fetch SAE {spec!r} from the hub: {exc}") from None
    folder = root / sub if sub else root
    if not folder.is_dir():
        raise SaeAuditError(f"hub repository {repo_id!r} has no folder {sub!r}")
    return folder


def resolve_sae_folder(spec: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder for ``spec``: the folder itself, or a hub snapshot of ``org/name[/subfolder][@revision]``."""
    path = Path(spec)
    if path.is_dir():
        return path
    if path.exists():
        raise SaeAuditError(f"SAE {str(spec)!r} is a file; pass the folder that holds config.json")
    text = str(spec)
    if text.startswith((".", "/", "~")) or text.count("/") < 1:
        raise SaeAuditError(f"SAE folder {text!r} does not exist")
    if "@" in text:  # org/name[/sub]@REVISION pins a revision from the spec alone
        text, _, pinned = text.rpartition("@")
        if revision is not None and revision != pinned:
            raise SaeAuditError(f"SAE {spec!r} names revision {pinned!r} but revision={revision!r} was also given")
        revision = pinned or None
    return _resolve_hub(text, revision)


def load_sae(spec: str | os.PathLike, revision: str | None = None, device: str | torch.device = "cpu") -> TopKSAE:
    """Load an SAE from a folder, a hub id, or ``hub_id/subfolder``.

    Args:
        spec: a local folder, ``org/name`` or ``org/name/sub/folder`` on the hub
            (through huggingface_hub's cache, so ``HF_HUB_OFFLINE=1`` works from a
            warm cache), optionally ending in ``@REVISION``. Formats: native,
            SAELens, saev, sparsify (:mod:`sae_audit.sae.formats`) and any format a
            plugin registers (:mod:`sae_audit.sae.registry`).
        revision: hub revision (branch, tag or commit hash) to pin.
        device: where to put the weights.
    Returns:
        A :class:`TopKSAE` in eval mode, float32.
    Raises:
        SaeAuditError: missing folder or repository, unknown format, inconsistent
            config or weights (wrong shapes, NaN, non-float, pickle files).
    """
    folder = resolve_sae_folder(spec, revision)
    sae = read_sae_folder(folder)
    if sae is not None:
        return sae.to(device).eval()
    names = sorted(p.name for p in folder.iterdir())[:10]
    raise SaeAuditError(
        f"{folder} is not an SAE folder sae-audit can read (found: {', '.join(names) or 'nothing'}); "
        f"known formats: {', '.join(r.name for r in sae_formats())}"
    )

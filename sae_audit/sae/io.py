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

import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from sae_audit.errors import SaeAuditError, is_network_error
from sae_audit.safe_files import check_regular, describe_mode, printable, read_json_file
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
    """``config.json`` beside ``model.safetensors``; a broken config is the native reader's to report.

    A config or weights name that exists but is not a regular file (a FIFO, a
    device, a dangling link) also claims the folder, so the reader can say what
    is wrong with it instead of "not an SAE folder"; nothing is opened here but
    a regular ``config.json`` of at most :data:`~sae_audit.safe_files.MAX_CONFIG_BYTES`.
    """
    cfg_path = folder / CONFIG_NAME
    if not os.path.lexists(cfg_path) or not os.path.lexists(folder / WEIGHTS_NAME):
        return False
    try:
        cfg = read_json_file(cfg_path, "SAE config")
    except SaeAuditError:
        return True  # not a regular file, too large, not JSON: let the native reader say so precisely
    return "d_sae" in cfg and "architecture" in cfg


def read_native(folder: Path) -> TopKSAE:
    """Read a native folder, checking ``config.json`` against the weights' header before allocating.

    Raises:
        SaeAuditError: ``config.json`` or ``model.safetensors`` missing, not a
            regular file, too large (config), not valid JSON (including JSON
            nested too deeply), an invalid config, or weights that do not
            match it (see :func:`sae_from_tensors`).
    """
    raw = read_json_file(folder / CONFIG_NAME, "SAE config")
    config = SAEConfig.from_dict(raw)
    weights = folder / WEIGHTS_NAME
    check_shapes(config, safetensors_shapes(weights), weights)
    return sae_from_tensors(config, read_safetensors(weights), weights)


def _not_safetensors(path: Path, exc: BaseException) -> SaeAuditError:
    why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return SaeAuditError(f"{printable(path)} is not a readable safetensors file ({why}); "
                         "sae-audit never unpickles weights")


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor in a safetensors file, read from its header only (no tensor data).

    Raises:
        SaeAuditError: the file is missing or not a regular file, or not
            safetensors (it is never unpickled).
    """
    from safetensors import safe_open

    check_regular(path, "SAE weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: tuple(int(d) for d in f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _not_safetensors(path, exc) from None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; anything else (a pickle, a truncated file) is refused.

    Callers that know the shapes to expect check them first with
    :func:`safetensors_shapes` and :func:`check_shapes`, which read only the
    header. The tensors' memory is bounded by the file's size (safetensors
    checks the header's offsets against it).

    Raises:
        SaeAuditError: the file is missing, not a regular file (a FIFO, a
            device), or not safetensors (it is never unpickled).
    """
    check_regular(path, "SAE weights file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _not_safetensors(path, exc) from None


def expected_shapes(config: SAEConfig) -> dict[str, tuple[int, ...]]:
    """The tensors an SAE of ``config`` is made of, with their shapes (nothing is allocated)."""
    from sae_audit.sae.architectures import extra_params

    return {
        "W_enc": (config.d_in, config.d_sae),
        "b_enc": (config.d_sae,),
        "W_dec": (config.d_sae, config.d_in),
        "b_dec": (config.d_in,),
        **extra_params(config),
    }


def check_shapes(config: SAEConfig, shapes: Mapping[str, Sequence[int]], source) -> None:
    """Compare the shapes a config declares with the shapes a file holds, before anything is allocated.

    This is what keeps a tiny folder whose config claims ``d_sae = 2**40`` from
    allocating that: the comparison uses only the file's header (or the shapes
    of tensors already read), never the config's sizes.

    Args:
        shapes: tensor name -> shape, e.g. from :func:`safetensors_shapes`.
        source: named in error messages.
    Raises:
        SaeAuditError: a tensor missing, or of another shape than the config says.
    """
    expected = expected_shapes(config)
    missing = [n for n in expected if n not in shapes]
    if missing:
        raise SaeAuditError(f"{printable(source)} lacks tensors: {', '.join(missing)}")
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise SaeAuditError(
                f"{printable(source)}: {name} has shape {list(shapes[name])}, config says {list(shape)}"
            )


def sae_from_tensors(config: SAEConfig, tensors: dict[str, torch.Tensor], source) -> TopKSAE:
    """Build the SAE of ``config`` from named tensors, checking every one.

    Every shape is compared with ``config`` before the SAE is built, so a
    config that claims a larger SAE than the tensors hold fails without
    allocating the claimed size.

    Args:
        tensors: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``,
            ``b_dec [d_in]`` (any float dtype; stored as float32), plus ``threshold
            [d_sae]`` for ``jumprelu``.
        source: named in error messages.
    Raises:
        SaeAuditError: a tensor missing, of the wrong shape, not floating point, or
            holding NaN/inf.
    """
    from sae_audit.sae.architectures import build_sae

    check_shapes(config, {n: tuple(t.shape) for n, t in tensors.items()}, source)
    expected = expected_shapes(config)
    for name in expected:
        t = tensors[name]
        if not t.is_floating_point():
            raise SaeAuditError(f"{printable(source)}: {name} has dtype {t.dtype}, expected a float type")
        if not torch.isfinite(t).all():
            raise SaeAuditError(f"{printable(source)}: {name} contains NaN or infinite values")
    sae = build_sae(config, seed=None)
    for name in expected:
        getattr(sae, name).data.copy_(tensors[name].to(torch.float32))
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
    except Exception as exc:  # noqa: BLE001 - the hub said no, or the network failed
        if not isinstance(exc, (RepositoryNotFoundError, HfHubHTTPError, ValueError)) and not is_network_error(exc):
            raise
        raise SaeAuditError(f"could not fetch SAE {spec!r} from the hub: {exc}") from None
    folder = root / sub if sub else root
    if not folder.is_dir():
        raise SaeAuditError(f"hub repository {repo_id!r} has no folder {sub!r}")
    return folder


def _local_problem(path: Path) -> str | None:
    """Why ``path``, which is on this machine in some form, is not a folder to read; ``None`` when nothing is there.

    Uses :func:`os.lstat`, so a dangling or looping symbolic link, or a path
    whose parent cannot be searched, counts as local (``os.path.lexists``
    semantics plus permission errors), never as a hub id.
    """
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:  # ELOOP in a parent, EACCES, ENAMETOOLONG
        return f"cannot be examined ({exc.strerror or exc})"
    if stat.S_ISLNK(st.st_mode):
        try:
            st = os.stat(path)
        except OSError as exc:
            return f"is a symbolic link that cannot be followed ({exc.strerror or exc}: a loop or a missing target)"
    if stat.S_ISDIR(st.st_mode):
        if not os.access(path, os.R_OK | os.X_OK):
            return "is a folder this user cannot read (permission denied)"
        return None
    if stat.S_ISREG(st.st_mode):
        return "is a file; pass the folder that holds the SAE's config and weights"
    return f"is {describe_mode(st.st_mode)}, not a folder"


def resolve_sae_folder(spec: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder for ``spec``: the folder itself, or a hub snapshot of ``org/name[/subfolder][@revision]``.

    Anything that exists on this machine under the name ``spec`` (a file, a
    FIFO, a dangling or looping symbolic link, a folder that cannot be read) is
    a local path and is never sent to the hub as a repository id.

    Raises:
        SaeAuditError: ``spec`` exists locally but is not a readable folder; it
            looks like a local path (starts with ``.``, ``/`` or ``~``, or has no
            ``/``) and does not exist; a revision given twice; or the hub errors
            of :func:`_resolve_hub`.
    """
    path = Path(spec)
    problem = _local_problem(path)
    if problem is not None:
        raise SaeAuditError(f"SAE {printable(spec)!r} {problem}")
    if os.path.lexists(path):  # _local_problem found a readable folder (or a link to one)
        return path
    text = str(spec)
    if text.startswith((".", "/", "~")) or text.count("/") < 1:
        raise SaeAuditError(f"SAE folder {printable(text)!r} does not exist")
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
    inner = sorted(p.name for p in folder.iterdir() if p.is_dir() and read_sae_folder(p) is not None)[:10]
    hint = (f"; it holds SAE folders (a trained sweep?): name each one, e.g. {folder / inner[0]}"
            if inner else "")
    raise SaeAuditError(
        f"{folder} is not an SAE folder sae-audit can read (found: {', '.join(names) or 'nothing'}); "
        f"known formats: {', '.join(r.name for r in sae_formats())}{hint}"
    )

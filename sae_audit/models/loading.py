"""Load a HF transformers vision model of a supported family, ready for capture.

``load_vision_model`` accepts a local folder written by ``save_pretrained``
(``config.json`` plus weights and ``preprocessor_config.json``) or a Hugging
Face hub id, resolved through huggingface_hub's cache (``HF_HUB_CACHE``;
``HF_HUB_OFFLINE=1`` works from a warm cache). ``trust_remote_code`` stays off
unless the caller passes it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sae_audit.distributed import local_device
from sae_audit.errors import SaeAuditError, is_network_error
from sae_audit.models.adapters import FamilyAdapter, TokenLayout
from sae_audit.models.hookpoint import HookPoint
from sae_audit.models.registry import adapter_for
from sae_audit.models.spec import display_name as display_name_of
from sae_audit.models.spec import DEVICES, MAX_IMAGE_SIZE, ModelSpec

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

_COMMIT_RE = re.compile(r"snapshots[/\\]([0-9a-f]{40})[/\\]")


@dataclass
class VisionModel:
    """A loaded vision model plus what sae-audit needs to know about it.

    Attributes:
        model: the transformers module, eval mode, every parameter
            ``requires_grad=False``.
        processor: the model's own HF image processor (PIL backend without
            torchvision), configured for ``image_size`` when one was asked for.
        family: ``"vit"``, ``"dinov2"``, ``"dinov2_with_registers"``,
            ``"clip"`` or ``"siglip"``.
        name: what the caller passed (hub id or folder).
        display_name: how reports name the model (:func:`sae_audit.models.spec.display_name`): the
            hub id, a name the caller gave, or a local folder's recorded ``model_name``; never a path.
        revision: the resolved 40-hex commit hash for hub ids, else the
            requested revision (or ``None``) for local folders.
        device, dtype: where the weights live.
        num_blocks, d_model: depth and residual width.
        layout: the token layout (CLS? registers?).
        patch_size: pixels per patch side.
        image_size: side of the square the processor produces (pixels); the
            token count is ``layout.n_prefix + (image_size // patch_size) ** 2``.
    """

    model: nn.Module = field(repr=False)
    processor: Any = field(repr=False)
    family: str
    name: str
    revision: str | None
    device: torch.device
    dtype: torch.dtype
    num_blocks: int
    d_model: int
    layout: TokenLayout
    patch_size: int
    image_size: int
    adapter: FamilyAdapter = field(repr=False, default=None)  # type: ignore[assignment]
    display_name: str = ""

    @property
    def num_tokens(self) -> int:
        """Tokens per image, ``n_prefix + n_patches``."""
        return self.layout.n_prefix + (self.image_size // self.patch_size) ** 2

    def preprocess(self, images: list) -> torch.Tensor:
        """PIL images -> ``pixel_values [B, 3, image_size, image_size]`` on ``device`` in ``dtype``.

        Images are converted to RGB first. Raises :class:`SaeAuditError` on an
        empty list.
        """
        images = list(images)
        if not images:
            raise SaeAuditError("preprocess got no images")
        images = [im.convert("RGB") if getattr(im, "mode", "RGB") != "RGB" else im for im in images]
        pv = self.processor(images=images, return_tensors="pt")["pixel_values"]
        if self.device.type == "cuda":  # page-locked, so the copy runs beside the GPU's work
            return pv.pin_memory().to(device=self.device, dtype=self.dtype, non_blocking=True)
        return pv.to(device=self.device, dtype=self.dtype)

    def check_hook_point(self, hook_point: HookPoint, context: str = "") -> None:
        """Raise :class:`SaeAuditError` (prefixed by ``context``) if this model cannot give ``hook_point``.

        The block must exist, and ``cls`` needs a CLS token (SigLIP has none).
        """
        if hook_point.block >= self.num_blocks:
            raise SaeAuditError(
                f"{context}hook point {hook_point.name} is past the depth of {self.name} (past the model's depth "
                f"of {self.num_blocks} blocks: block.0 .. block.{self.num_blocks - 1})", field="hook"
            )
        if hook_point.tokens == "cls" and not self.layout.has_cls:
            raise SaeAuditError(f"{context}{self.name} ({self.family}) has no CLS token; use `tokens` patch or mean",
                                field="tokens")

    def pooled(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pooled ("judge") embedding ``[B, d_model]`` as the family defines it (see adapters)."""
        pv = pixel_values.to(device=self.device, dtype=self.dtype)
        return self.adapter.pooled(self.model, pv)


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` (a GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N`` as a torch device.

    Under torchrun with GPUs, ``auto`` and ``cuda`` mean this rank's GPU,
    ``cuda:LOCAL_RANK`` (:func:`sae_audit.distributed.local_device`).

    Raises:
        SaeAuditError: an unknown device, or CUDA asked for where there is none.
    """
    text = str(device)
    if text in ("auto", "cuda") and local_device() is not None:
        return local_device()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise SaeAuditError(
                f"`device` {text!r} asked for but CUDA is not available here; use `device` cpu or auto",
                field="device",
            )
        return torch.device(text)
    raise SaeAuditError(f"unknown device {text!r} (`device`): choose one of {', '.join(DEVICES)} (or 'cuda:N')",
                        field="device")


def _resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
        raise SaeAuditError(f"unsupported dtype {dtype} (`dtype`): choose one of {', '.join(DTYPES)}", field="dtype")
    if dtype not in DTYPES:
        raise SaeAuditError(f"unknown dtype {dtype!r} (`dtype`): choose one of {', '.join(DTYPES)}", field="dtype")
    return DTYPES[dtype]


_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


def _looks_like_hub_id(name: str) -> bool:
    """``name`` or ``org/name`` (one slash at most, no leading dot or slash)."""
    return bool(_HUB_ID_RE.match(name)) and ".." not in name


def _resolve_source(name: str, revision: str | None) -> tuple[str, str | None, bool]:
    """Return (source for from_pretrained, revision to record, is_hub)."""
    path = Path(os.path.expanduser(name))
    if path.exists():
        if not path.is_dir():
            raise SaeAuditError(f"{name!r} is a file; pass the folder written by save_pretrained or a hub id")
        if not (path / "config.json").is_file():
            raise SaeAuditError(
                f"folder {name!r} has no config.json: pass a folder written by "
                "model.save_pretrained(folder) (with the image processor saved there too), or a hub id"
            )
        return str(path), revision, False
    if not _looks_like_hub_id(name):
        raise SaeAuditError(f"no such folder {name!r}; pass an existing folder or a hub id such as 'facebook/dinov2-small'")
    parent = path.parent
    if parent != Path(".") and parent.is_dir():
        # "models/dinov2-smal" next to a local models/ folder is a mistyped path, not a hub id: say so at once
        # instead of asking the hub (and waiting through its retries when there is no network).
        import difflib

        near = difflib.get_close_matches(path.name, [p.name for p in parent.iterdir() if p.is_dir()], n=3)
        hint = f"; did you mean {' or '.join(repr(str(parent / n)) for n in near)}?" if near else ""
        raise SaeAuditError(
            f"no such folder {name!r} (a folder {str(parent)!r} exists here, so this is read as a path, not a hub "
            f"id){hint} (to load the hub model of that name, run from a folder without {str(parent)!r} in it)")

    # Hub id: resolve the revision to a commit through huggingface_hub's cache.
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub import errors as hf_errors

    offline = constants.is_offline_mode() if hasattr(constants, "is_offline_mode") else constants.HF_HUB_OFFLINE
    try:
        cfg_path = hf_hub_download(name, "config.json", revision=revision)
    except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled) as e:
        where = constants.HF_HUB_CACHE
        if offline:
            raise SaeAuditError(
                f"{name!r} (revision {revision or 'main'}) is not in the local Hugging Face cache ({where}) "
                "and offline mode is on (HF_HUB_OFFLINE=1): download it once with network access "
                "(unset HF_HUB_OFFLINE), point HF_HUB_CACHE at a cache that holds it, or pass a local "
                "folder written by save_pretrained"
            ) from e
        raise SaeAuditError(
            f"cannot fetch {name!r} (revision {revision or 'main'}): not in the local cache ({where}) and "
            f"the hub could not be reached ({e.__class__.__name__}); check the network, or pass a local folder "
            "(with a warm cache, HF_HUB_OFFLINE=1 skips the network and its retries)"
        ) from e
    except hf_errors.RepositoryNotFoundError as e:
        raise SaeAuditError(
            f"no model {name!r} on the Hugging Face hub (or it is private/gated: log in with `hf auth login`); "
            "check the id, or pass a local folder"
        ) from e
    except hf_errors.RevisionNotFoundError as e:
        raise SaeAuditError(f"model {name!r} has no revision {revision!r}; check the branch, tag or commit") from e
    except hf_errors.EntryNotFoundError as e:
        raise SaeAuditError(
            f"hub repo {name!r} has no config.json: it is not a transformers model; pass another id or a folder"
        ) from e
    except Exception as e:  # noqa: BLE001 - the hub said no, or the network failed
        if not isinstance(e, (ValueError, hf_errors.HfHubHTTPError)) and not is_network_error(e):
            raise
        raise SaeAuditError(f"cannot fetch {name!r} from the Hugging Face hub: {type(e).__name__}: {e}") from e
    m = _COMMIT_RE.search(cfg_path)
    commit = m.group(1) if m else revision
    return name, commit, True


def _processor_size(processor: Any) -> tuple[int, int]:
    """(H, W) the processor produces, measured on a 3:4 dummy image."""
    from PIL import Image

    dummy = Image.new("RGB", (96, 72), (127, 127, 127))
    pv = processor(images=[dummy], return_tensors="pt")["pixel_values"]
    return int(pv.shape[-2]), int(pv.shape[-1])


def load_model(spec: ModelSpec) -> VisionModel:
    """Load the model a :class:`~sae_audit.models.spec.ModelSpec` names (see :func:`load_vision_model`)."""
    return load_vision_model(spec.name, revision=spec.revision, device=spec.device, dtype=spec.dtype,
                             trust_remote_code=spec.trust_remote_code, image_size=spec.image_size,
                             display_name=spec.display_name)


def load_vision_model(
    name_or_path: str | os.PathLike,
    revision: str | None = ModelSpec.revision,
    device: str | torch.device = ModelSpec.device,
    dtype: str | torch.dtype = ModelSpec.dtype,
    trust_remote_code: bool = ModelSpec.trust_remote_code,
    image_size: int | None = ModelSpec.image_size,
    display_name: str | None = ModelSpec.display_name,
) -> VisionModel:
    """Load a supported HF vision model and its image processor.

    Args:
        name_or_path: a folder written by ``save_pretrained`` (with
            ``config.json`` and a ``preprocessor_config.json``) or a hub id.
            A full CLIP / SigLIP checkpoint loads its vision tower only
            (``CLIPVisionModel`` / ``SiglipVisionModel``); a
            ``ViTForImageClassification`` checkpoint keeps its head (the
            fidelity suite compares its logits).
        revision: branch, tag or commit for hub ids (default ``main``).
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``
            or ``"cuda:N"``.
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"`` (weights and
            ``preprocess`` output).
        trust_remote_code: forwarded to transformers; off unless asked for.
        image_size: optional side in pixels; images are then resized (shortest
            edge) and centre-cropped to ``image_size x image_size``, and the
            position embeddings interpolated (DINOv2 does this on its own;
            ViT/CLIP/SigLIP get ``interpolate_pos_encoding=True``). Must be a
            positive multiple of the patch size.
        display_name: how reports name the model (default: see :func:`sae_audit.models.spec.display_name`).

    Returns:
        :class:`VisionModel` (eval mode, no grad).

    Raises:
        SaeAuditError: bad device/dtype/image_size, a folder without
            ``config.json`` or without an image processor config, a hub id not
            in the cache while offline (``HF_HUB_OFFLINE=1``) or unreachable,
            an unsupported family.
    """
    name = str(name_or_path)
    dev = resolve_device(device)
    torch_dtype = _resolve_dtype(dtype)
    if image_size is not None and (not isinstance(image_size, int) or isinstance(image_size, bool)
                                   or not 0 < image_size <= MAX_IMAGE_SIZE):
        raise SaeAuditError(f"`image_size` must be a positive int of at most {MAX_IMAGE_SIZE} pixels, "
                            f"got {image_size!r}", field="image_size")

    source, resolved_rev, is_hub = _resolve_source(name, revision)
    load_rev = resolved_rev if is_hub else None

    from transformers import AutoConfig, AutoImageProcessor

    try:
        config = AutoConfig.from_pretrained(source, revision=load_rev, trust_remote_code=trust_remote_code)
    except ValueError as e:  # unknown model_type, remote code refused, ...
        raise SaeAuditError(f"cannot read the config of {name!r}: {e}") from e
    except OSError as e:
        raise SaeAuditError(f"cannot read the config of {name!r}: {e}") from e
    adapter = adapter_for(config)

    patch = adapter.patch_size(config)
    if image_size is not None and image_size % patch:
        raise SaeAuditError(
            f"`image_size` {image_size} is not a multiple of the patch size {patch} of {name!r}; "
            f"try {max(patch, round(image_size / patch) * patch)}", field="image_size"
        )

    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a full CLIP/SigLIP checkpoint reports its text tower as unexpected
    try:
        model, info = adapter.model_class_for(config).from_pretrained(
            source,
            revision=load_rev,
            dtype=torch_dtype,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
        )
    except OSError as e:
        raise SaeAuditError(f"cannot load the weights of {name!r}: {e}") from e
    finally:
        hf_logging.set_verbosity(verbosity)
    # A pooler head may be absent (ViT saved by ViTForImageClassification); anything
    # else missing would leave randomly initialised weights in the audited model.
    missing = [k for k in info.get("missing_keys", ()) if not k.startswith(("pooler.", "head."))]
    if missing:
        shown = ", ".join(sorted(missing)[:5]) + (" ..." if len(missing) > 5 else "")
        raise SaeAuditError(
            f"the checkpoint {name!r} lacks {len(missing)} weights of {adapter.model_class().__name__} "
            f"({shown}); it is not a {adapter.family} vision checkpoint sae-audit can load"
        )

    proc_kwargs: dict[str, Any] = {}
    if image_size is not None:
        proc_kwargs = dict(
            do_resize=True,
            size={"shortest_edge": image_size},
            do_center_crop=True,
            crop_size={"height": image_size, "width": image_size},
        )
    try:
        processor = AutoImageProcessor.from_pretrained(
            source, revision=load_rev, trust_remote_code=trust_remote_code, **proc_kwargs
        )
    except (OSError, ValueError) as e:
        raise SaeAuditError(
            f"cannot load the image processor of {name!r} ({e.__class__.__name__}: {e}); a local folder needs "
            "a preprocessor_config.json: save one with image_processor.save_pretrained(folder)"
        ) from e

    h, w = _processor_size(processor)
    if image_size is not None and (h, w) != (image_size, image_size):
        raise SaeAuditError(
            f"the image processor of {name!r} ({type(processor).__name__}) produced {h}x{w} images, "
            f"not the {image_size}x{image_size} asked for; it cannot be configured to centre-crop"
        )
    if h != w or h % patch:
        raise SaeAuditError(
            f"the image processor of {name!r} produces {h}x{w} images, which is not a square multiple "
            f"of the patch size {patch}; pass `image_size` (a multiple of {patch})", field="image_size"
        )

    model.eval()
    model.requires_grad_(False)
    model.to(dev)
    return VisionModel(
        model=model,
        processor=processor,
        family=adapter.family,
        name=name,
        revision=resolved_rev,
        device=dev,
        dtype=torch_dtype,
        num_blocks=adapter.num_blocks(config),
        d_model=adapter.d_model(config),
        layout=adapter.layout(config),
        patch_size=patch,
        image_size=h,
        adapter=adapter,
        display_name=display_name_of(name, is_hub, source, display_name),
    )

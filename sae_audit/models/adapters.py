"""One small adapter per supported model family.

An adapter knows, for one HF transformers vision family, where the list of
transformer blocks lives, how the token sequence is laid out (CLS? registers?
patches), which extra forward arguments are needed for a non-native input
resolution, and how the family defines its pooled image embedding.

Built-in families (registered by the built-in plugin through
``sae_audit_register_model_adapters``; plugins register more the same way;
:func:`sae_audit.models.registry.adapter_for` refuses anything no plugin
registered with :class:`~sae_audit.errors.SaeAuditError`):

=========================  =====================================  ==========================
family                     transformers class                     token layout
=========================  =====================================  ==========================
``vit``                    ``ViTModel`` (also from                CLS, patches
                           ``ViTForImageClassification`` ckpts)
``dinov2``                 ``Dinov2Model``                        CLS, patches
``dinov2_with_registers``  ``Dinov2WithRegistersModel``           CLS, registers, patches
``clip``                   ``CLIPVisionModel`` (also from a       CLS, patches
                           full ``CLIPModel`` checkpoint)
``siglip``                 ``SiglipVisionModel`` (also from a     patches only (no CLS)
                           full ``SiglipModel`` checkpoint)
=========================  =====================================  ==========================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from sae_audit.errors import SaeAuditError


@dataclass(frozen=True)
class TokenLayout:
    """How a family lays out its token sequence: ``[CLS?] [registers...] [patches...]``.

    ``has_cls``: whether token 0 is a CLS token. ``n_registers``: register
    tokens right after the CLS token (DINOv2 with registers), 0 otherwise.
    """

    has_cls: bool
    n_registers: int = 0

    @property
    def n_prefix(self) -> int:
        """Number of non-patch tokens before the first patch token."""
        return int(self.has_cls) + self.n_registers


def _get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


class FamilyAdapter:
    """Base adapter. Subclasses set the class attributes; methods are shared.

    Attributes:
        family: the family name used across sae-audit (``"vit"``, ...).
        model_types: ``config.model_type`` values that map to this family
            (both the vision-only and the full multimodal config, where any).
        block_paths: attribute paths tried in order to find the
            ``nn.ModuleList`` of transformer blocks (covers transformers 4 and
            5 layouts and the wrappers ``ViTForImageClassification``,
            ``CLIPModel``, ``SiglipModel``).
        interpolates_always: the family interpolates position embeddings on
            its own for any input size (DINOv2); otherwise the forward needs
            ``interpolate_pos_encoding=True`` away from ``config.image_size``.
    """

    family: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    block_paths: ClassVar[tuple[str, ...]] = ()
    interpolates_always: ClassVar[bool] = False

    # -- classes ---------------------------------------------------------------
    def model_class(self) -> type[nn.Module]:
        """The transformers class that holds the vision tower of this family."""
        raise NotImplementedError

    def model_class_for(self, config: Any) -> type[nn.Module]:
        """The class to load a checkpoint of ``config`` with (default :meth:`model_class`; ViT keeps a
        classification head when the checkpoint has one)."""
        return self.model_class()

    # -- config ----------------------------------------------------------------
    def vision_config(self, config: Any) -> Any:
        """The vision part of ``config`` (``config.vision_config`` for full CLIP/SigLIP)."""
        return getattr(config, "vision_config", None) or config

    def layout(self, config: Any) -> TokenLayout:
        return TokenLayout(has_cls=True, n_registers=0)

    def num_blocks(self, config: Any) -> int:
        return int(self.vision_config(config).num_hidden_layers)

    def d_model(self, config: Any) -> int:
        return int(self.vision_config(config).hidden_size)

    def patch_size(self, config: Any) -> int:
        ps = self.vision_config(config).patch_size
        return int(ps[0] if isinstance(ps, (tuple, list)) else ps)

    def native_image_size(self, config: Any) -> int:
        size = self.vision_config(config).image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    # -- model -----------------------------------------------------------------
    def blocks(self, model: nn.Module) -> nn.ModuleList:
        """The ``nn.ModuleList`` of transformer blocks of ``model`` (block 0 first).

        Raises :class:`SaeAuditError` if none of ``block_paths`` exists.
        """
        for path in self.block_paths:
            try:
                mods = _get_path(model, path)
            except AttributeError:
                continue
            if isinstance(mods, nn.ModuleList):
                return mods
        raise SaeAuditError(
            f"cannot find the transformer blocks of this {type(model).__name__} "
            f"(family {self.family!r}; tried {', '.join(self.block_paths)}); "
            "this transformers version may lay the model out differently"
        )

    def forward_kwargs(self, model: nn.Module, pixel_values: torch.Tensor) -> dict[str, Any]:
        """Extra keyword arguments for ``model(pixel_values=..., **kw)``.

        ``interpolate_pos_encoding=True`` when the input ``[B, C, H, W]`` is not
        the checkpoint's native ``config.image_size`` square (ViT, CLIP, SigLIP).
        """
        if self.interpolates_always:
            return {}
        h, w = pixel_values.shape[-2:]
        native = self.native_image_size(model.config)
        if (h, w) != (native, native):
            return {"interpolate_pos_encoding": True}
        return {}

    def vision_module(self, model: nn.Module) -> nn.Module:
        """The vision tower inside ``model`` (itself unless it wraps one)."""
        return model

    def pooled(self, model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pooled image embedding ``[B, d_model]`` (dtype of the model), no grad.

        Used as a "judge" embedding. Default: ``pooler_output`` of the family's
        forward (see each subclass for what that is).
        """
        vm = self.vision_module(model)
        with torch.inference_mode():
            out = vm(pixel_values=pixel_values, **self.forward_kwargs(vm, pixel_values))
        return self.pool_output(out)

    def pool_output(self, out: Any) -> torch.Tensor:
        """The pooled embedding ``[B, d_model]`` from the vision module's forward output.

        :func:`sae_audit.models.capture_and_pool` uses it to get block outputs
        and the pooled embedding from one forward pass.
        """
        return out.pooler_output

    def head_logits(self, model: nn.Module, out: Any) -> torch.Tensor | None:
        """Class logits ``[B, C]`` of a model with a classification head, from the vision module's forward
        output ``out``; ``None`` (the default) for models without one."""
        return None


class ViTAdapter(FamilyAdapter):
    """ViT (Dosovitskiy et al. 2021). Pooled = CLS after the final layernorm.

    (Not ``ViTModel.pooler_output``: that dense+tanh pooler is absent or
    untrained in many checkpoints, e.g. those saved by ``ViTForImageClassification``.)
    """

    family = "vit"
    model_types = ("vit",)
    block_paths = ("layers", "encoder.layer", "vit.layers", "vit.encoder.layer")

    def model_class(self) -> type[nn.Module]:
        from transformers import ViTModel

        return ViTModel

    def model_class_for(self, config: Any) -> type[nn.Module]:
        """``ViTForImageClassification`` for a checkpoint saved with its head (its logits feed the fidelity
        suite's KL divergence and top-1 agreement), else ``ViTModel``."""
        if "ViTForImageClassification" in (getattr(config, "architectures", None) or []):
            from transformers import ViTForImageClassification

            return ViTForImageClassification
        return self.model_class()

    def vision_module(self, model: nn.Module) -> nn.Module:
        return getattr(model, "vit", model)

    def pool_output(self, out: Any) -> torch.Tensor:
        return out.last_hidden_state[:, 0]

    def head_logits(self, model: nn.Module, out: Any) -> torch.Tensor | None:
        """``ViTForImageClassification``'s logits: its ``classifier`` on the final-layernormed CLS token."""
        head = getattr(model, "classifier", None)
        return None if head is None or not hasattr(model, "vit") else head(out.last_hidden_state[:, 0, :])


class Dinov2Adapter(FamilyAdapter):
    """DINOv2 (Oquab et al. 2023). Pooled = ``pooler_output`` = CLS after the final layernorm."""

    family = "dinov2"
    model_types = ("dinov2",)
    block_paths = ("encoder.layer", "dinov2.encoder.layer")
    interpolates_always = True

    def model_class(self) -> type[nn.Module]:
        from transformers import Dinov2Model

        return Dinov2Model

    def vision_module(self, model: nn.Module) -> nn.Module:
        return getattr(model, "dinov2", model)


class Dinov2WithRegistersAdapter(Dinov2Adapter):
    """DINOv2 with registers (Darcet et al. 2024): CLS, ``num_register_tokens`` registers, patches."""

    family = "dinov2_with_registers"
    model_types = ("dinov2_with_registers",)
    block_paths = ("encoder.layer", "dinov2_with_registers.encoder.layer")

    def model_class(self) -> type[nn.Module]:
        from transformers import Dinov2WithRegistersModel

        return Dinov2WithRegistersModel

    def layout(self, config: Any) -> TokenLayout:
        return TokenLayout(has_cls=True, n_registers=int(self.vision_config(config).num_register_tokens))

    def vision_module(self, model: nn.Module) -> nn.Module:
        return getattr(model, "dinov2_with_registers", model)


class ClipAdapter(FamilyAdapter):
    """CLIP vision tower (Radford et al. 2021). Pooled = ``pooler_output`` = CLS after ``post_layernorm``

    (before the visual projection).
    """

    family = "clip"
    model_types = ("clip_vision_model", "clip")
    block_paths = (
        "encoder.layers",
        "vision_model.encoder.layers",
        "vision_model.vision_model.encoder.layers",
    )

    def model_class(self) -> type[nn.Module]:
        from transformers import CLIPVisionModel

        return CLIPVisionModel

    def vision_module(self, model: nn.Module) -> nn.Module:
        return getattr(model, "vision_model", model) if hasattr(model, "text_model") else model


class SiglipAdapter(ClipAdapter):
    """SigLIP vision tower (Zhai et al. 2023): no CLS token, every token is a patch.

    Pooled = ``pooler_output`` of the multihead attention-pooling head; a
    checkpoint without the head (``vision_use_head=False``) falls back to the
    mean of the final (post-layernorm) tokens.
    """

    family = "siglip"
    model_types = ("siglip_vision_model", "siglip")

    def model_class(self) -> type[nn.Module]:
        from transformers import SiglipVisionModel

        return SiglipVisionModel

    def layout(self, config: Any) -> TokenLayout:
        return TokenLayout(has_cls=False, n_registers=0)

    def pool_output(self, out: Any) -> torch.Tensor:
        if out.pooler_output is not None:
            return out.pooler_output
        return out.last_hidden_state.mean(dim=1)

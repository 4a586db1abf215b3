"""The model-family registry: which adapter reads which transformers model.

Families come from the ``sae_audit_register_model_adapters`` hook (the
built-in plugin registers ViT, DINOv2, DINOv2 with registers, CLIP and
SigLIP; plugins add others). The checks on what a plugin registers live here,
next to the code that uses it.
"""

from __future__ import annotations

from typing import Any

from sae_audit.errors import SaeAuditError
from sae_audit.models.adapters import FamilyAdapter
from sae_audit.plugin_manager import Registration, RegistrationError, get_plugin_manager

KIND = "model_adapters"


def _accept(adapter) -> tuple:
    """``register(adapter)``: a :class:`FamilyAdapter` instance; its family and model types are its names."""
    if not isinstance(adapter, FamilyAdapter):
        raise RegistrationError(
            f"register() takes a sae_audit.models.adapters.FamilyAdapter instance, got {type(adapter).__name__}"
        )
    return adapter.family, adapter, type(adapter).__doc__ or "", tuple(adapter.model_types)


def family_registrations() -> list[Registration]:
    """Every registered family (built-in first), as :class:`~sae_audit.plugin_manager.Registration` s.

    Raises:
        sae_audit.plugin_manager.PluginError: two plugins register the same family or model type.
    """
    return get_plugin_manager().registrations(KIND, _accept)


def model_adapters() -> dict[str, FamilyAdapter]:
    """Family adapters by family name (built-in first)."""
    return {r.name: r.value for r in family_registrations()}


def adapter_for(model_or_config: Any) -> FamilyAdapter:
    """The adapter for a model, a transformers config, a ``model_type`` or a family name.

    Accepts an ``nn.Module`` with ``.config``, a ``PretrainedConfig`` (or
    anything with ``model_type``), or a string (family name or
    ``config.model_type``), looked up among the registered families.

    Raises:
        SaeAuditError: the family is not supported (the message lists the supported ones).
    """
    regs = family_registrations()
    if isinstance(model_or_config, str):
        key = model_or_config
    else:
        config = getattr(model_or_config, "config", model_or_config)
        key = getattr(config, "model_type", None)
        if key is None:
            raise SaeAuditError(
                f"cannot tell the model family of {type(model_or_config).__name__}: it has no "
                f"config.model_type; supported families: {', '.join(r.name for r in regs)}"
            )
    for r in regs:
        if key == r.name or key in r.keys:
            return r.value
    raise SaeAuditError(
        f"unsupported model family {key!r}; supported families: {', '.join(r.name for r in regs)} "
        "(built in: transformers classes ViTModel, Dinov2Model, Dinov2WithRegistersModel, "
        "CLIPVisionModel, SiglipVisionModel; plugins add others)"
    )

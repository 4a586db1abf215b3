"""Load HF vision models and read their block outputs (hook points, SPEC section 3).

Public API:

- :func:`load_vision_model` -> :class:`VisionModel` (model + processor + layout);
- :func:`capture` block outputs ``[B, T, d_model]``, stopping the forward early;
- :func:`select_tokens` a token set (``cls``/``patch``/``mean``/``all``);
- :class:`TokenLayout`, :func:`adapter_for` (per-family knowledge), :class:`HookPoint`.
"""

from sae_audit.models.adapters import FamilyAdapter, TokenLayout
from sae_audit.models.capture import capture, capture_and_pool, select_tokens
from sae_audit.models.hookpoint import HookPoint
from sae_audit.models.loading import VisionModel, load_model, load_vision_model
from sae_audit.models.registry import adapter_for, model_adapters
from sae_audit.models.spec import ModelSpec

__all__ = [
    "FamilyAdapter",
    "HookPoint",
    "ModelSpec",
    "TokenLayout",
    "VisionModel",
    "adapter_for",
    "capture",
    "capture_and_pool",
    "load_model",
    "load_vision_model",
    "model_adapters",
    "select_tokens",
]

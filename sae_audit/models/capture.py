"""Capture block outputs (hook points, SPEC section 3) and select token sets.

``capture`` runs the forward pass only as far as the deepest hooked block: a
forward hook on that block raises a private exception which is caught here, so
no compute is spent on later blocks.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sae_audit.errors import SaeAuditError
from sae_audit.models.adapters import TokenLayout
from sae_audit.models.hookpoint import TOKEN_SETS, HookPoint
from sae_audit.models.registry import adapter_for

if TYPE_CHECKING:
    from sae_audit.models.loading import VisionModel


class _StopForward(Exception):
    """Raised from the deepest hook to end the forward pass early (never escapes capture)."""


#: Whether each block seen by a capture returns a tuple (transformers 4) or a tensor (5):
#: :func:`sae_audit.models.splice.continue_forward` answers in the same shape.
BLOCK_RETURNS_TUPLE: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()


def _as_hook_point(hp: HookPoint | str) -> HookPoint:
    return hp if isinstance(hp, HookPoint) else HookPoint.parse(hp)


def capture(
    model: "VisionModel | nn.Module",
    pixel_values: torch.Tensor,
    hook_points: Iterable[HookPoint | str],
) -> dict[str, torch.Tensor]:
    """Outputs of the hooked transformer blocks, all tokens.

    Args:
        model: a :class:`~sae_audit.models.loading.VisionModel` or a bare HF
            vision model of a supported family (``ViTModel``, ``Dinov2Model``,
            ``Dinov2WithRegistersModel``, ``CLIPVisionModel``,
            ``SiglipVisionModel``; the wrappers ``ViTForImageClassification``,
            ``CLIPModel`` and ``SiglipModel`` work too).
        pixel_values: ``[B, C, H, W]`` float tensor as produced by the model's
            processor; moved to the VisionModel's device/dtype when given a
            VisionModel, used as is with a bare model.
        hook_points: :class:`HookPoint` objects or strings (``"block.6"``,
            ``"6"``, ``"block.6:cls"``), or a single one; the token set is
            ignored here (see :func:`select_tokens`).

    Returns:
        ``{hook_point.name: Tensor[B, T, d_model]}`` for each distinct block,
        with every token (CLS, registers, patches), in the model's dtype,
        detached (computed under ``torch.inference_mode``). Equal to
        ``hidden_states[L + 1]`` of a full forward with
        ``output_hidden_states=True``.

    Raises:
        SaeAuditError: no hook points, a block index past the model's depth,
            an unsupported family, or a malformed hook point string.
    """
    out, _ = _run(model, pixel_values, hook_points, stop_early=True)
    return out


def capture_and_pool(
    model: "VisionModel | nn.Module",
    pixel_values: torch.Tensor,
    hook_points: Iterable[HookPoint | str],
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Block outputs (as :func:`capture`) and the pooled embedding, from ONE full forward pass.

    The pooled embedding is the family's judge embedding (``adapter.pool_output``,
    equal to ``VisionModel.pooled``), ``[B, d_model]``. Costs one forward of the
    whole model instead of a stopped forward plus a second full one.

    Raises:
        SaeAuditError: as :func:`capture`.
    """
    out, result = _run(model, pixel_values, hook_points, stop_early=False)
    adapter = adapter_for(model) if isinstance(model, nn.Module) else model.adapter
    return out, adapter.pool_output(result).detach()


def _run(model, pixel_values, hook_points, stop_early: bool):
    """Run the forward with hooks on the wanted blocks: ``(block outputs, forward output or None)``."""
    if isinstance(hook_points, (str, HookPoint)):
        hook_points = [hook_points]
    hps = [_as_hook_point(hp) for hp in hook_points]
    if not hps:
        raise SaeAuditError("capture needs at least one hook point, e.g. 'block.6'")

    if isinstance(model, nn.Module):
        net = model
        adapter = adapter_for(model)
        x = pixel_values
    else:  # VisionModel
        net = model.model
        adapter = model.adapter
        x = pixel_values.to(device=model.device, dtype=model.dtype)

    blocks = adapter.blocks(net)
    depth = len(blocks)
    wanted = sorted({hp.block for hp in hps})
    if wanted[-1] >= depth:
        raise SaeAuditError(
            f"hook point block.{wanted[-1]} is past the model's depth: it has {depth} blocks "
            f"(valid: block.0 .. block.{depth - 1})"
        )
    deepest = wanted[-1]
    out: dict[str, torch.Tensor] = {}

    def make_hook(idx: int):
        def hook(_mod: nn.Module, _inp: Any, output: Any) -> None:
            BLOCK_RETURNS_TUPLE[_mod] = isinstance(output, (tuple, list))
            t = output[0] if isinstance(output, (tuple, list)) else output
            out[f"block.{idx}"] = t.detach()
            if stop_early and idx == deepest:
                raise _StopForward

        return hook

    handles = [blocks[i].register_forward_hook(make_hook(i)) for i in wanted]
    vision = adapter.vision_module(net)
    result = None
    try:
        with torch.inference_mode():
            result = vision(pixel_values=x, **adapter.forward_kwargs(vision, x))
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = [i for i in wanted if f"block.{i}" not in out]
    if missing:  # pragma: no cover - would mean the family's forward skips blocks
        raise RuntimeError(f"blocks {missing} were never called during the forward pass")
    return out, result




def select_tokens(acts: torch.Tensor, tokens: str, layout: TokenLayout) -> torch.Tensor:
    """Select a token set (SPEC section 3) from block outputs ``acts [B, T, d]``.

    - ``cls``: ``[B, 1, d]`` (token 0);
    - ``patch``: ``[B, P, d]``, the patch tokens (CLS and registers excluded);
    - ``mean``: ``[B, 1, d]``, the mean over the patch tokens (in ``acts.dtype``);
    - ``all``: ``[B, T, d]``, unchanged.

    ``cls``/``patch``/``all`` return views of ``acts``.

    Raises:
        SaeAuditError: ``cls`` on a layout without a CLS token (SigLIP), an
            unknown token set, or ``acts`` not 3-D / shorter than the prefix.
    """
    if acts.ndim != 3:
        raise SaeAuditError(f"expected activations of shape [B, T, d], got {tuple(acts.shape)}")
    if tokens not in TOKEN_SETS:
        raise SaeAuditError(f"unknown token set {tokens!r}: choose one of {', '.join(TOKEN_SETS)}")
    if tokens == "all":
        return acts
    if tokens == "cls":
        if not layout.has_cls:
            raise SaeAuditError(
                "token set 'cls' asked of a model without a CLS token (e.g. SigLIP); "
                "use 'patch' or 'mean' instead"
            )
        return acts[:, :1]
    if acts.shape[1] <= layout.n_prefix:
        raise SaeAuditError(
            f"activations have {acts.shape[1]} tokens but the layout has {layout.n_prefix} "
            "non-patch tokens: no patch tokens left"
        )
    patches = acts[:, layout.n_prefix :]
    if tokens == "patch":
        return patches
    return patches.mean(dim=1, keepdim=True)

"""Splicing a replacement into the residual stream and continuing the model's forward (SPEC section 5).

- :func:`forward_with_outputs`: one full forward giving the hooked block outputs
  (as :func:`~sae_audit.models.capture`) and the model's output ``y``: the
  family's pooled embedding, plus the class logits when the model has a
  classification head (``ViTForImageClassification``).
- :func:`splice_tokens`: the block output with the SAE's token set replaced
  (``cls``: token 0; ``patch``: the patch tokens, registers untouched; ``all``:
  every token). ``mean`` SAEs read the mean of the patch tokens, which is not a
  token; their splice shifts every patch token by the same vector so that the
  patches' mean becomes the replacement while each token keeps its deviation
  from the mean: ``h'_p = h_p - mean_p(h) + x_hat``. The SAE never saw those
  deviations, so they stay untouched, exactly as other tokens stay untouched
  for the other token sets.
- :func:`continue_forward`: the model's output when block ``L`` outputs a given
  tensor, computed by the model's *own* forward with blocks ``0..L``
  short-circuited (blocks before ``L`` pass their input through, block ``L``
  returns the tensor; the patch embedding still runs, which is cheap), so the
  later blocks, final norm, pooler and head are the model's code. One call
  handles a whole stack of replacements (the SAE splice and the mean ablation
  of several SAEs at one block) as one batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sae_audit.errors import SaeAuditError
from sae_audit.models.adapters import TokenLayout
from sae_audit.models.capture import BLOCK_RETURNS_TUPLE, _run
from sae_audit.models.hookpoint import HookPoint
from sae_audit.models.registry import adapter_for


@dataclass(frozen=True)
class ModelOutput:
    """What a model outputs for a batch.

    Attributes:
        pooled: ``[B, d_model]`` float32, the family's pooled image embedding.
        logits: ``[B, C]`` float32 class logits, or ``None`` without a classification head.
    """

    pooled: torch.Tensor
    logits: torch.Tensor | None = None

    def chunk(self, n: int) -> list["ModelOutput"]:
        """Split a stacked output of ``n * B`` rows into ``n`` outputs of ``B`` rows."""
        pooled = self.pooled.chunk(n)
        logits = self.logits.chunk(n) if self.logits is not None else [None] * n
        return [ModelOutput(p, lg) for p, lg in zip(pooled, logits)]


@dataclass(frozen=True)
class SpliceOutputs:
    """The model's output on one batch, as is, with an SAE spliced in and with mean ablation.

    Attributes:
        base, sae, ablation: :class:`ModelOutput` s of ``B`` images each.
        valid: ``[B]`` bool, images whose hooked tokens were all finite (others are not scored).
    """

    base: ModelOutput
    sae: ModelOutput
    ablation: ModelOutput
    valid: torch.Tensor

    def subset(self, keep: torch.Tensor) -> "SpliceOutputs":
        def sub(o: ModelOutput) -> ModelOutput:
            return ModelOutput(o.pooled[keep], o.logits[keep] if o.logits is not None else None)

        return SpliceOutputs(sub(self.base), sub(self.sae), sub(self.ablation), self.valid[keep])


def _unpack(model, pixel_values):
    if isinstance(model, nn.Module):
        return model, adapter_for(model), pixel_values, next(model.parameters()).dtype
    return model.model, model.adapter, pixel_values.to(device=model.device, dtype=model.dtype), model.dtype


def forward_with_outputs(model, pixel_values: torch.Tensor, hook_points) -> tuple[dict[str, torch.Tensor], ModelOutput]:
    """Block outputs ``{block.L: [B, T, d]}`` and the model's :class:`ModelOutput`, from one full forward.

    Raises:
        SaeAuditError: as :func:`sae_audit.models.capture`.
    """
    acts, result = _run(model, pixel_values, hook_points, stop_early=False)
    net, adapter, _, _ = _unpack(model, pixel_values)
    with torch.inference_mode():
        logits = adapter.head_logits(net, result)
    return acts, ModelOutput(adapter.pool_output(result).detach().float(),
                             logits.detach().float() if logits is not None else None)


def splice_tokens(acts: torch.Tensor, tokens: str, layout: TokenLayout, replacement: torch.Tensor) -> torch.Tensor:
    """``acts [B, T, d]`` with token set ``tokens`` replaced by ``replacement`` (see the module docstring).

    Args:
        acts: block outputs ``[B, T, d]``.
        tokens: ``cls``, ``patch``, ``mean`` or ``all``.
        layout: the model's :class:`TokenLayout`.
        replacement: what :func:`sae_audit.models.select_tokens` would return (``[B, 1, d]``
            for ``cls``/``mean``, ``[B, P, d]`` for ``patch``, ``[B, T, d]`` for ``all``);
            broadcastable shapes (e.g. ``[1, 1, d]`` for a mean ablation) are accepted.
    Returns:
        A new ``[B, T, d]`` tensor in ``acts.dtype``.
    Raises:
        SaeAuditError: an unknown token set, or ``cls`` on a layout without a CLS token.
    """
    out = acts.clone()
    rep = replacement.to(acts.dtype)
    p0 = layout.n_prefix
    if tokens == "all":
        out[:] = rep
    elif tokens == "cls":
        if not layout.has_cls:
            raise SaeAuditError("token set 'cls' asked of a model without a CLS token")
        out[:, :1] = rep
    elif tokens == "patch":
        out[:, p0:] = rep
    elif tokens == "mean":
        patches = acts[:, p0:].float()
        out[:, p0:] = (patches - patches.mean(dim=1, keepdim=True) + replacement.float()).to(acts.dtype)
    else:
        raise SaeAuditError(f"unknown token set {tokens!r}")
    return out


def continue_forward(model, pixel_values: torch.Tensor, block: int, hidden: torch.Tensor) -> ModelOutput:
    """The model's output when block ``block`` outputs ``hidden`` (``[B, T, d]``) for images ``pixel_values``.

    Runs the model's own forward (see the module docstring): ``pixel_values`` must
    have the same batch size as ``hidden`` (only their patch embedding is computed,
    then discarded). Under ``torch.inference_mode``.

    Raises:
        SaeAuditError: the forward never reaches block ``block`` through the family's
            list of blocks (the output cannot be computed after the hook this way), or
            it fails with the block replaced (the message names the model and the error).
    """
    net, adapter, x, dtype = _unpack(model, pixel_values)
    blocks = adapter.blocks(net)
    if not 0 <= block < len(blocks):
        raise SaeAuditError(f"block.{block} is not a block of this model (it has {len(blocks)})")
    if blocks[block] not in BLOCK_RETURNS_TUPLE:  # learn the blocks' output shape from one short capture
        _run(model, pixel_values[:1], [HookPoint(block)], stop_early=True)
    as_tuple = BLOCK_RETURNS_TUPLE.get(blocks[block], False)
    hidden = hidden.to(device=x.device, dtype=dtype)
    called: list[int] = []

    def short_circuit(i: int):
        def forward(hidden_states, *args, **kwargs):
            called.append(i)
            out = hidden if i == block else hidden_states
            return (out,) if as_tuple else out

        return forward

    for i in range(block + 1):
        blocks[i].forward = short_circuit(i)
    name = type(net).__name__
    try:
        vision = adapter.vision_module(net)
        with torch.inference_mode():
            result = vision(pixel_values=x, **adapter.forward_kwargs(vision, x))
            logits = adapter.head_logits(net, result)
            pooled = adapter.pool_output(result)
    except SaeAuditError:
        raise
    except Exception as exc:  # noqa: BLE001 - a family whose forward cannot take a replaced block
        raise SaeAuditError(f"cannot compute the output of {name} after block.{block} with the block's output "
                            f"replaced ({type(exc).__name__}: {exc}); the fidelity suite needs a model whose "
                            "forward runs its blocks one after the other") from exc
    finally:
        for i in range(block + 1):
            blocks[i].__dict__.pop("forward", None)
    if block not in called:
        raise SaeAuditError(f"cannot compute the output of {name} after block.{block}: its forward does not run "
                            "the blocks sae-audit hooks (the family adapter's `blocks`), so the SAE's "
                            "reconstruction cannot be spliced in; the fidelity suite does not support this model")
    return ModelOutput(pooled.detach().float(), logits.detach().float() if logits is not None else None)

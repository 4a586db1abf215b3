"""The fidelity suite's model work: the ID mean for mean ablation and the spliced forward of each batch.

- :func:`ablation_means`: the mean-ablation baseline needs the ID set's mean
  activation before any image is scored, and the ID set's own images are
  scored too; so it is computed exactly by a first, cheap pass over the ID set
  (the forward stopped after the deepest hooked block, no SAE work): for each
  SAE, the mean of its inputs (the same ``mean_D(x)`` the FVU uses), in float64.
- :func:`spliced_outputs`: per batch, for every hooked block, ONE extra partial
  forward (from the block to the output, :func:`sae_audit.models.splice.continue_forward`)
  on a stack of the batch with each SAE's reconstruction spliced in and with each
  SAE's tokens mean-ablated; the unmodified output comes from the audit's own full
  forward. On the first batch the stack also holds the unmodified block output,
  whose output must equal the model's own (checks that the output can be computed
  after the hook).
"""

from __future__ import annotations

import torch

from sae_audit.data import ImageSet, iter_batches
from sae_audit.errors import SaeAuditError
from sae_audit.models import HookPoint, VisionModel, capture, select_tokens
from sae_audit.models.splice import ModelOutput, SpliceOutputs, continue_forward, splice_tokens


@torch.no_grad()
def ablation_means(vm: VisionModel, saes, id_set: ImageSet, batch_size: int, strict: bool = False,
                   progress: bool = True) -> list[torch.Tensor]:
    """``[d_in]`` float32 mean of every SAE's inputs over the ID set (finite rows), in SAE order.

    An SAE with no finite input in the whole set gets a NaN mean: none of its images
    can be scored anyway (their hooked tokens are not finite), and the fidelity suite
    says so.
    """
    hps = [HookPoint.parse(h) for h in sorted({s.hook_point.name for s in saes})]
    sums = [torch.zeros(s.sae.d_in, dtype=torch.float64) for s in saes]
    counts = [0] * len(saes)
    it = iter_batches(id_set, vm.preprocess, batch_size, strict=strict,
                      progress=f"{id_set.name} (ID mean for the fidelity suite's ablation)" if progress else None)
    for batch in it:
        acts = capture(vm, batch.pixel_values, hps)
        for i, item in enumerate(saes):
            sel = select_tokens(acts[item.hook_point.name], item.hook_point.tokens, vm.layout)
            x = sel.reshape(-1, sel.shape[-1]).double().cpu()
            x = x[torch.isfinite(x).all(dim=1)]
            sums[i] += x.sum(dim=0)
            counts[i] += x.shape[0]
    return [(s / c).float() if c else torch.full_like(s, float("nan")).float() for s, c in zip(sums, counts)]


def replacement(sel: torch.Tensor, finite: torch.Tensor, x_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The SAE's splice for one batch: ``(replacement [B, n_tok, d], valid [B])``.

    ``sel`` is the hooked token set ``[B, n_tok, d]``; ``x_hat`` reconstructs its
    finite rows (``finite [B * n_tok]``). Non-finite rows keep their value and
    mark their image invalid (not scored).
    """
    rep = sel.float().reshape(-1, sel.shape[-1]).clone()
    rep[finite] = x_hat.to(rep.device, rep.dtype)
    valid = finite.view(sel.shape[0], sel.shape[1]).all(dim=1).cpu()
    return rep.view(sel.shape), valid


def spliced_outputs(vm: VisionModel, pixel_values: torch.Tensor, acts: dict, base: ModelOutput, saes,
                    replacements: list, means: list, check: bool = False) -> list[SpliceOutputs]:
    """One :class:`SpliceOutputs` per SAE for one batch (see the module docstring).

    Args:
        acts: the batch's block outputs ``{block.L: [B, T, d]}`` from the full forward.
        base: the model's unmodified output for the batch.
        saes: the audited SAEs (``hook_point`` with block and token set).
        replacements: per SAE, ``(replacement [B, n_tok, d], valid [B])`` (:func:`replacement`).
        means: per SAE, the ``[d_in]`` ID mean (:func:`ablation_means`).
        check: also splice the unmodified block output in, and require the model's own output back.
    Raises:
        SaeAuditError: the output cannot be computed after the hook
            (:func:`sae_audit.models.splice.continue_forward`), or splicing a block's own
            output in does not give the model's output back.
    """
    base = ModelOutput(base.pooled.cpu(), base.logits.cpu() if base.logits is not None else None)
    out: list = [None] * len(saes)
    blocks = sorted({s.hook_point.block for s in saes})
    for block in blocks:
        members = [i for i, s in enumerate(saes) if s.hook_point.block == block]
        h = acts[f"block.{block}"]
        stack = [splice_tokens(h, saes[i].hook_point.tokens, vm.layout, replacements[i][0]) for i in members]
        stack += [splice_tokens(h, saes[i].hook_point.tokens, vm.layout, means[i].to(h.device).view(1, 1, -1))
                  for i in members]
        if check:
            stack.append(h)
        n = len(stack)
        pv = pixel_values.repeat(n, *([1] * (pixel_values.ndim - 1)))
        parts = [ModelOutput(o.pooled.cpu(), o.logits.cpu() if o.logits is not None else None)
                 for o in continue_forward(vm, pv, block, torch.cat(stack)).chunk(n)]
        if check:
            _check_identity(vm, block, base, parts[-1])
        for j, i in enumerate(members):
            out[i] = SpliceOutputs(base, parts[j], parts[len(members) + j], replacements[i][1])
    return out


def _check_identity(vm: VisionModel, block: int, base: ModelOutput, same: ModelOutput) -> None:
    tol = 1e-3 if vm.dtype == torch.float32 else 5e-2
    ok = torch.isfinite(base.pooled).all(dim=1)  # images the model itself gives no finite output for are not scored
    if not ok.any():
        return
    d = (1.0 - torch.nn.functional.cosine_similarity(base.pooled[ok].double(), same.pooled[ok].double(), dim=1)).abs()
    if not bool(torch.isfinite(d).all()) or float(d.max()) > tol:
        raise SaeAuditError(
            f"cannot compute the output of {vm.name} after block.{block} from the block's output alone: splicing "
            f"the block's own output back in changed the model's output (cosine distance up to {float(d.max()):.3g}); "
            "its output depends on more than the residual stream after that block (e.g. a head reading earlier "
            "blocks), so the fidelity suite cannot run on it")

"""Downstream fidelity: does the model still do the same thing with the SAE spliced in? (SPEC section 5)

For every image the audit runs the model as is (output ``y``), with the SAE's
hooked tokens replaced by its reconstruction ``x_hat`` (``y_sae``) and with them
replaced by the ID set's mean activation (mean ablation, ``y_ablate``), and
hands the three outputs to this suite (:class:`~sae_audit.models.splice.SpliceOutputs`;
the splice itself is :mod:`sae_audit.models.splice`). With
``d(y, y') = 1 - cos(y, y')`` on the pooled embedding:

- ``fidelity = 1 - E[d(y, y_sae)] / E[d(y, y_ablate)]`` (1: output untouched, 0: no
  better than erasing what the hook carries; :func:`sae_audit.metrics.fidelity_score`),
  ``cosine`` = mean ``cos(y, y_sae)`` (and ``cosine_ablation``);
- with a classification head (logits): the mean ``KL(softmax(y) || softmax(y_sae))``
  in nats (``kl``, and ``kl_ablation``), ``fidelity_kl = 1 - E[KL_sae] / E[KL_ablate]``
  (the analogue of SAELens' CE-loss score), and top-1 agreement with the
  unmodified model (``top1_agreement``, ``top1_agreement_ablation``).

Per ID/OOD pair (:func:`compare`): ``fidelity_gap = fidelity_ID - fidelity_OOD``
(and ``fidelity_kl_gap``): how much of what the model does out of distribution the
dictionary fails to carry; and ``auroc_output_distance``, the AUROC of the
per-image ``d(y, y_sae)`` as an OOD-detection signal. Intervals: per-image
values summed with the images' Poisson bootstrap weights (SPEC section 5).

Memory: the sums, ``R`` replicate sums, and one float per image (its output
distance, for the AUROC).
"""

from __future__ import annotations

import torch

from sae_audit import metrics
from sae_audit.errors import SaeAuditError
from sae_audit.metrics import nan_to_none
from sae_audit.suites.base import SuiteBatch
from sae_audit.suites.common import check_same_bootstrap, interval_dict

# Columns of the per-image table (the KL and top-1 columns only with logits).
_COLS = ("distance", "distance_ablation", "cosine", "cosine_ablation", "kl", "kl_ablation", "top1", "top1_ablation")


def per_image(outputs) -> torch.Tensor:
    """``[B, 8]`` float64 per-image values (see ``_COLS``; the logits columns NaN without logits)."""
    y, ys, ya = outputs.base.pooled, outputs.sae.pooled, outputs.ablation.pooled
    cos_s, cos_a = metrics.cosine(y, ys), metrics.cosine(y, ya)
    nan = torch.full_like(cos_s, float("nan"))
    if outputs.base.logits is not None:
        lg, ls, la = outputs.base.logits, outputs.sae.logits, outputs.ablation.logits
        top = lg.argmax(dim=-1)
        cols = [metrics.kl_softmax(lg, ls), metrics.kl_softmax(lg, la), (ls.argmax(dim=-1) == top).double(),
                (la.argmax(dim=-1) == top).double()]
    else:
        cols = [nan, nan, nan, nan]
    return torch.stack([1.0 - cos_s, 1.0 - cos_a, cos_s, cos_a, *cols], dim=1)


class FidelityAccumulator:
    """Sums of per-image output distances (and their replicates); the per-image distance for the AUROC."""

    def __init__(self):
        self.n = 0
        self.n_invalid = 0
        self.sums = torch.zeros(len(_COLS), dtype=torch.float64)
        self.has_logits: bool | None = None
        self.images: list[torch.Tensor] = []
        self.distance: list[torch.Tensor] = []
        self.rep: torch.Tensor | None = None  # [R, 1 + len(_COLS)]: image count, then the sums
        self.bootstrap = None

    @torch.no_grad()
    def accumulate(self, batch: SuiteBatch) -> None:
        """Raises :class:`SaeAuditError` when the batch carries no spliced outputs."""
        out = batch.outputs
        if out is None:
            raise SaeAuditError("the fidelity suite needs the model's outputs with the SAE spliced in; run it "
                                "through the audit (it computes them when the suite is selected)")
        ic = batch.image_codes
        table = per_image(out)
        # Scored: images whose hooked tokens were finite and whose three outputs are finite.
        valid = out.valid.bool() & torch.isfinite(table[:, :4]).all(dim=1)
        self.n_invalid += int((~valid).sum())
        if not valid.any():
            return
        vals = table[valid]
        has = out.base.logits is not None
        if self.has_logits is not None and self.has_logits != has:
            raise SaeAuditError("the fidelity suite saw batches with and without class logits")
        self.has_logits = has
        self.n += int(valid.sum())
        self.sums += vals.nan_to_num(0.0).sum(dim=0)
        self.images.append(ic.images[valid].clone())
        self.distance.append(vals[:, 0].float())
        w = batch.image_weights
        if w is not None:
            check_same_bootstrap(self.bootstrap, batch.bootstrap)
            self.bootstrap = batch.bootstrap
            table = torch.cat([torch.ones(len(vals), 1, dtype=torch.float64), vals.nan_to_num(0.0)], dim=1)
            contrib = w[:, valid] @ table
            self.rep = contrib if self.rep is None else self.rep + contrib

    def merge(self, other: "FidelityAccumulator") -> None:
        if other.has_logits is not None and self.has_logits is not None and other.has_logits != self.has_logits:
            raise SaeAuditError("cannot merge fidelity accumulators with and without class logits")
        check_same_bootstrap(self.bootstrap, other.bootstrap)
        self.bootstrap = self.bootstrap or other.bootstrap
        self.has_logits = self.has_logits if self.has_logits is not None else other.has_logits
        self.n += other.n
        self.n_invalid += other.n_invalid
        self.sums += other.sums
        self.images += other.images
        self.distance += other.distance
        if other.rep is not None:
            self.rep = other.rep.clone() if self.rep is None else self.rep + other.rep

    def _metrics(self, n, sums) -> dict:
        """``{metric: value}`` from an image count and column sums (floats or ``[R]`` tensors alike)."""
        mean = {c: sums[..., i] / n for i, c in enumerate(_COLS)}
        out = {"fidelity": metrics.fidelity_score(mean["distance"], mean["distance_ablation"]),
               "cosine": mean["cosine"], "cosine_ablation": mean["cosine_ablation"],
               "distance": mean["distance"], "distance_ablation": mean["distance_ablation"]}
        if self.has_logits:
            out.update(kl=mean["kl"], kl_ablation=mean["kl_ablation"],
                       fidelity_kl=metrics.fidelity_score(mean["kl"], mean["kl_ablation"]),
                       top1_agreement=mean["top1"], top1_agreement_ablation=mean["top1_ablation"])
        return out

    def replicate_metrics(self) -> dict[str, torch.Tensor] | None:
        if self.rep is None:
            return None
        n = self.rep[:, 0]
        safe = torch.where(n > 0, n, torch.full_like(n, float("nan")))
        return {k: torch.as_tensor(v, dtype=torch.float64) for k, v in self._metrics(safe, self.rep[:, 1:]).items()}

    def finish(self) -> dict:
        out: dict = {"n_images": self.n, "n_not_scored": self.n_invalid, "logits": bool(self.has_logits)}
        if self.n == 0:
            out["reason"] = "no image with finite hooked activations and finite model outputs"
            return out
        out.update({k: nan_to_none(float(v)) for k, v in self._metrics(self.n, self.sums).items()})
        reps = self.replicate_metrics()
        if reps is not None:
            out["intervals"] = interval_dict(reps)
        return out

    def image_distances(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``([n] image ids, [n] d(y, y_sae))``, ascending by image id."""
        if not self.images:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.float64)
        ids, d = torch.cat(self.images), torch.cat(self.distance).double()
        order = torch.argsort(ids, stable=True)
        return ids[order], d[order]


def compare(id_acc: FidelityAccumulator, ood_acc: FidelityAccumulator) -> dict:
    """``fidelity_gap`` (and ``fidelity_kl_gap`` with logits), ``auroc_output_distance``, with ``intervals``."""
    a, b = id_acc.finish(), ood_acc.finish()
    out: dict = {"fidelity_id": a.get("fidelity"), "fidelity_ood": b.get("fidelity")}
    keys = [("fidelity_gap", "fidelity")] + ([("fidelity_kl_gap", "fidelity_kl")] if id_acc.has_logits else [])
    for gap, key in keys:
        out[gap] = a[key] - b[key] if a.get(key) is not None and b.get(key) is not None else None
    ids_a, d_a = id_acc.image_distances()
    ids_b, d_b = ood_acc.image_distances()
    out["auroc_output_distance"] = nan_to_none(metrics.auroc(d_a, d_b))
    ra, rb = id_acc.replicate_metrics(), ood_acc.replicate_metrics()
    if ra is not None and rb is not None and id_acc.bootstrap is not None and ood_acc.bootstrap is not None:
        reps = {gap: ra[key] - rb[key] for gap, key in keys}
        reps["auroc_output_distance"] = metrics.weighted_auroc(d_a, d_b, id_acc.bootstrap.weights(ids_a),
                                                               ood_acc.bootstrap.weights(ids_b))
        out["intervals"] = interval_dict(reps)
    if a.get("reason") or b.get("reason"):
        out["reason"] = a.get("reason") or b.get("reason")
    return out

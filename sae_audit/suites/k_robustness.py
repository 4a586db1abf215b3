"""k-robustness: FVU and L0 when the inference budget ``k`` is swapped for ``k'`` (SPEC sections 1 and 4).

``k'`` runs over ``{k/4, k/2, k, 2k, 4k}`` (rounded down, at least 1, at most
``d_sae``). One pass: each batch is encoded once with the largest ``k'`` and
truncated to each smaller budget with :meth:`SparseCodes.top` (the top ``m``
of the top ``K`` pre-activations are the top ``m`` overall, and the ReLU after
selection commutes with the truncation). FVU is about the dataset mean
(Chan et al.'s parallel moments), exactly as in the coverage suite.

When the batches carry judge embeddings (the monosemanticity suite runs in
the same audit), the mean monosemanticity score at each ``k'`` is reported
too (SPEC section 4: "FVU (and MS)"), with one streaming
:class:`~sae_audit.suites.monosemanticity.MonosemanticityAccumulator` per budget.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from sae_audit import metrics
from sae_audit.metrics import nan_to_none
from sae_audit.sae import TopKSAE
from sae_audit.suites.base import SuiteBatch
from sae_audit.suites.common import Moments


def budgets_for(k: int, d_sae: int) -> list[int]:
    """The ``k'`` values ``{k/4, k/2, k, 2k, 4k}`` clipped to ``[1, d_sae]``, sorted, distinct."""
    return sorted({min(max(1, v), d_sae) for v in (k // 4, k // 2, k, 2 * k, 4 * k)})


class KRobustnessAccumulator:
    """Streaming FVU, L0 and effective units of ``sae`` at each budget ``k'``; memory ``O(d_in)`` per budget."""

    def __init__(self, sae: TopKSAE, budgets: list[int] | None = None):
        self.sae = sae
        self.budgets = budgets or budgets_for(sae.k, sae.d_sae)
        self.moments = Moments(sae.d_in)
        nb = len(self.budgets)
        self.sse = torch.zeros(nb, dtype=torch.float64)
        self.l0 = torch.zeros(nb, dtype=torch.float64)
        self.eu = torch.zeros(nb, dtype=torch.float64)
        self.ms: list | None = None  # one MS accumulator per budget, once embeddings are seen

    @torch.no_grad()
    def accumulate(self, batch: SuiteBatch) -> None:
        x = batch.x
        if x.shape[0] == 0:
            return
        self.moments.add(x)
        codes = self.sae.encode(x, k=max(self.budgets))
        xd = x.double()
        if batch.embeddings is not None and self.ms is None:
            from sae_audit.suites.monosemanticity import MonosemanticityAccumulator

            self.ms = [MonosemanticityAccumulator(self.sae.d_sae, batch.embeddings.shape[1], replicates=False)
                       for _ in self.budgets]
        for b, m in enumerate(self.budgets):
            c = codes.top(m)
            x_hat = self.sae.decode(c).cpu().double()
            self.sse[b] += float((xd - x_hat).pow(2).sum())
            self.l0[b] += float(c.l0().sum())
            self.eu[b] += float(metrics.effective_units(c.values.cpu().double()).sum())
            if self.ms is not None:
                self.ms[b].accumulate(replace(batch, codes=c.to("cpu"), x_hat=x_hat.float()))

    def merge(self, other: "KRobustnessAccumulator") -> None:
        if other.budgets != self.budgets:
            raise ValueError("cannot merge k-robustness accumulators with different budgets")
        self.moments.merge(other.moments)
        if other.ms is not None:
            if self.ms is None:
                self.ms = other.ms
            else:
                for mine, theirs in zip(self.ms, other.ms):
                    mine.merge(theirs)
        self.sse += other.sse
        self.l0 += other.l0
        self.eu += other.eu

    def finish(self) -> dict:
        n, m2 = self.moments.n, self.moments.m2
        fvu = [nan_to_none(float(s) / m2) if n >= 2 and m2 > 0 else None for s in self.sse]
        out = {
            "k": self.sae.k,
            "budgets": list(self.budgets),
            "n_inputs": n,
            "fvu": fvu,
            "l0_mean": [nan_to_none(float(v) / n) if n else None for v in self.l0],
            "effective_units_mean": [nan_to_none(float(v) / n) if n else None for v in self.eu],
        }
        if self.ms is not None:
            means = []
            for acc in self.ms:
                ms = acc.scores()
                ms = ms[torch.isfinite(ms)]
                means.append(nan_to_none(float(ms.mean())) if ms.numel() else None)
            out["ms_mean"] = means
        if n < 2 or m2 <= 0:
            out["reason"] = "FVU needs at least two inputs with non-zero variance"
        return out

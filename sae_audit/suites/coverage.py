"""Coverage suite: which latents fire, how often, and how well the SAE reconstructs.

Per dataset (``CoverageAccumulator``): firing frequency ``f_j`` of every
latent; alive / dead / dense fractions; L0 and effective units per input; FVU
about the dataset mean, explained variance, cosine similarity and relative
MSE. Per ID/OOD pair (:func:`compare`): shared alive latents, OOD-only and
ID-only latents, Jensen-Shannon divergence and Spearman correlation of the
frequency profiles, and the reconstruction gap ``FVU_OOD - FVU_ID``, plus the
latents whose terms of the JS divergence account for most of it.
Definitions: ``shared/SPEC.md`` section 4.

Intervals (SPEC section 5): when the batches carry bootstrap weights, every
sum is also accumulated on ``R`` Poisson-bootstrap replicates (firing counts
``[R, d_sae]``, token counts, squared errors, cosines, L0 and effective units
``[R]``, and the moments of ``x`` ``[R, d_in]``), each metric is computed per
replicate, and ``finish()`` / :func:`compare` add an ``intervals`` block:
``{metric: [low, high]}``, the 2.5th and 97.5th percentiles. Tokens of one
image share the image's weight (the image is the sampling unit).
"""

from __future__ import annotations

import torch

from sae_audit import metrics
from sae_audit.metrics import nan_to_none
from sae_audit.suites.base import SuiteBatch
from sae_audit.suites.common import Moments, ReplicateMoments, check_same_bootstrap, interval_dict, per_image_sums

N_EU_BINS = 20


class CoverageAccumulator:
    """Streaming, mergeable coverage statistics of one SAE on one dataset.

    Memory is ``O(d_sae + d_in + k)`` whatever the number of inputs. The mean and
    the sum of squared deviations of ``x`` are merged with Chan et al.'s
    parallel update (:class:`~sae_audit.suites.common.Moments`), so FVU is exact
    about the dataset mean and stable under a large constant offset.
    """

    def __init__(self, d_sae: int, d_in: int, k: int, dense_threshold: float = 0.1):
        self.d_sae, self.d_in, self.k = d_sae, d_in, k
        self.dense_threshold = dense_threshold
        self.moments = Moments(d_in)
        self.n_nonfinite = 0
        self.fire_counts = torch.zeros(d_sae, dtype=torch.int64)
        self.act_sums = torch.zeros(d_sae, dtype=torch.float64)
        self.sse = 0.0  # sum ||x - x_hat||^2
        self.cos_sum = 0.0
        self.rel_mse_sum = 0.0
        self.l0_hist = torch.zeros(k + 1, dtype=torch.int64)
        self.eu_hist = torch.zeros(N_EU_BINS, dtype=torch.int64)
        self.eu_sum = 0.0
        self.eu_sq = 0.0
        self.bootstrap = None  # the Bootstrap of the first weighted batch
        self.rep: dict | None = None  # replicate sums, once a weighted batch is seen

    def _init_replicates(self, r: int) -> None:
        self.rep = {
            "n": torch.zeros(r, dtype=torch.float64),
            "fire": torch.zeros(r, self.d_sae, dtype=torch.float64),
            "sums": torch.zeros(r, 5, dtype=torch.float64),  # sse, cosine, relative MSE, L0, effective units
            "moments": ReplicateMoments(r, self.d_in),
        }

    # -- streaming --------------------------------------------------------
    @torch.no_grad()
    def accumulate(self, batch: SuiteBatch) -> None:
        self.n_nonfinite += batch.n_nonfinite
        if batch.x.shape[0] == 0:
            return
        x, c, xc, sq = batch.x_moments  # shared by the SAEs reading the same activations
        x_hat = batch.x_hat.double()
        codes = batch.codes
        active = codes.values > 0
        idx = codes.indices[active]
        self.fire_counts += torch.bincount(idx, minlength=self.d_sae)
        self.act_sums.index_add_(0, idx, codes.values[active].double())

        l0 = active.sum(dim=1)
        self.l0_hist += torch.bincount(l0.clamp(max=self.k), minlength=self.k + 1)
        eu = metrics.effective_units(codes.values.double())
        self.eu_sum += float(eu.sum())
        self.eu_sq += float(eu.pow(2).sum())
        bins = (eu / self.k * N_EU_BINS).long().clamp(0, N_EU_BINS - 1)
        self.eu_hist += torch.bincount(bins, minlength=N_EU_BINS)

        err = (x - x_hat).pow(2).sum(dim=1)
        cos = metrics.cosine(x, x_hat)
        rel = err / x.pow(2).sum(dim=1).clamp_min(1e-30)
        self.sse += float(err.sum())
        self.cos_sum += float(cos.sum())
        self.rel_mse_sum += float(rel.sum())
        self.moments._combine(x.shape[0], c, float(sq.sum()))  # as Moments.add, sharing the centred rows
        w = batch.image_weights
        if w is not None:
            self._accumulate_replicates(batch, w, torch.stack([err, cos, rel, l0.double(), eu], dim=1), idx, active)

    def _accumulate_replicates(self, batch: SuiteBatch, w: torch.Tensor, per_row: torch.Tensor,
                               idx: torch.Tensor, active: torch.Tensor) -> None:
        """The replicate sums: per-image sums of the batch, weighted by ``w [R, B]`` in one product each."""
        if self.rep is None:
            self._init_replicates(w.shape[0])
            self.bootstrap = batch.bootstrap
        elif self.rep["n"].shape[0] != w.shape[0]:
            raise ValueError("bootstrap weights changed their number of replicates between batches")
        ic = batch.image_codes
        row, b = ic.row, len(ic.images)
        tok_row = row[:, None].expand_as(active)[active]
        fire_img = torch.bincount(tok_row * self.d_sae + idx, minlength=b * self.d_sae).view(b, self.d_sae)
        self.rep["n"] += w @ torch.bincount(row, minlength=b).double()
        self.rep["fire"] += w @ fire_img.double()
        self.rep["sums"] += w @ per_image_sums(per_row, row, b)
        self.rep["moments"]._combine(*batch.x_replicate_moments)

    @property
    def n(self) -> int:
        """Inputs seen (finite rows)."""
        return self.moments.n

    def merge(self, other: "CoverageAccumulator") -> None:
        """Absorb ``other`` (same SAE, a disjoint part of the same dataset)."""
        if (other.d_sae, other.d_in, other.k) != (self.d_sae, self.d_in, self.k):
            raise ValueError("cannot merge coverage accumulators of different SAEs")
        self.moments.merge(other.moments)
        self.n_nonfinite += other.n_nonfinite
        self.fire_counts += other.fire_counts
        self.act_sums += other.act_sums
        self.sse += other.sse
        self.cos_sum += other.cos_sum
        self.rel_mse_sum += other.rel_mse_sum
        self.l0_hist += other.l0_hist
        self.eu_hist += other.eu_hist
        self.eu_sum += other.eu_sum
        self.eu_sq += other.eu_sq
        if other.rep is not None:
            check_same_bootstrap(self.bootstrap, other.bootstrap)
            if self.rep is None:
                self._init_replicates(other.rep["n"].shape[0])
                self.bootstrap = other.bootstrap
            if self.rep["n"].shape != other.rep["n"].shape:
                raise ValueError("cannot merge coverage accumulators with different numbers of replicates")
            for key in ("n", "fire", "sums"):
                self.rep[key] += other.rep[key]
            self.rep["moments"].merge(other.rep["moments"])

    # -- results ------------------------------------------------------------
    def frequencies(self) -> torch.Tensor:
        """``[d_sae]`` float64 firing frequency ``f_j`` (zeros when no input was seen)."""
        return self.fire_counts.double() / max(self.n, 1)

    def replicate_metrics(self) -> dict[str, torch.Tensor] | None:
        """``{metric: [R] float64}`` on every bootstrap replicate, or ``None`` without replicates."""
        if self.rep is None:
            return None
        rep = self.rep
        n = rep["n"]
        safe = torch.where(n > 0, n, torch.ones_like(n))
        nan = torch.full_like(n, float("nan"))
        alive = (rep["fire"] > 0).double().mean(dim=1)
        m2 = rep["moments"].m2
        fvu = torch.where((n >= 2) & (m2 > 0), rep["sums"][:, 0] / torch.where(m2 > 0, m2, torch.ones_like(m2)), nan)
        per_input = torch.where(n[:, None] > 0, rep["sums"] / safe[:, None], torch.full_like(rep["sums"], float("nan")))
        return {
            "alive_fraction": alive,
            "dead_fraction": 1.0 - alive,
            "dense_fraction": (rep["fire"] / safe[:, None] > self.dense_threshold).double().mean(dim=1),
            "fvu": fvu,
            "explained_variance": 1.0 - fvu,
            "cosine": per_input[:, 1],
            "relative_mse": per_input[:, 2],
            "l0_mean": per_input[:, 3],
            "effective_units_mean": per_input[:, 4],
        }

    def finish(self) -> dict:
        """Per-dataset coverage metrics (JSON-ready; NaN becomes ``None``), with ``intervals`` when bootstrapped."""
        n = self.n
        f = self.frequencies()
        alive = self.fire_counts > 0
        n_alive = int(alive.sum())
        dense = f > self.dense_threshold
        mean_act = torch.where(alive, self.act_sums / self.fire_counts.clamp_min(1).double(), torch.zeros_like(f))
        m2 = self.moments.m2
        fvu = self.sse / m2 if n >= 2 and m2 > 0 else float("nan")
        l0_vals = torch.arange(self.k + 1, dtype=torch.float64)
        l0_mean = float((self.l0_hist.double() * l0_vals).sum() / n) if n else float("nan")
        l0_sq = float((self.l0_hist.double() * l0_vals.pow(2)).sum() / n) if n else float("nan")
        eu_mean = self.eu_sum / n if n else float("nan")
        return {
            "n_inputs": n,
            "n_nonfinite": self.n_nonfinite,
            "n_alive": n_alive,
            "alive_fraction": n_alive / self.d_sae,
            "dead_fraction": 1.0 - n_alive / self.d_sae,
            "dense_fraction": int(dense.sum()) / self.d_sae,
            "dense_threshold": self.dense_threshold,
            "fvu": nan_to_none(fvu),
            "explained_variance": nan_to_none(1.0 - fvu),
            "cosine": nan_to_none(self.cos_sum / n if n else float("nan")),
            "relative_mse": nan_to_none(self.rel_mse_sum / n if n else float("nan")),
            "l0_mean": nan_to_none(l0_mean),
            "l0_std": nan_to_none(max(l0_sq - l0_mean**2, 0.0) ** 0.5 if n else float("nan")),
            "l0_hist": [int(c) for c in self.l0_hist],
            "effective_units_mean": nan_to_none(eu_mean),
            "effective_units_std": nan_to_none(max(self.eu_sq / n - eu_mean**2, 0.0) ** 0.5 if n else float("nan")),
            "effective_units_hist": {
                "edges": [self.k * i / N_EU_BINS for i in range(N_EU_BINS + 1)],
                "counts": [int(c) for c in self.eu_hist],
            },
            "log10_frequency_hist": metrics.log10_histogram(f),
            "frequencies": [float(f"{v:.6g}") for v in f.tolist()],
            "mean_activation": [float(f"{v:.6g}") for v in mean_act.tolist()],
            **self._intervals(),
        }

    def _intervals(self) -> dict:
        reps = self.replicate_metrics()
        return {} if reps is None else {"intervals": interval_dict(reps)}


def compare(id_side, ood_side, top: int = 10) -> dict:
    """ID vs OOD coverage of the same SAE, from two :class:`CoverageAccumulator` s (or their ``finish()`` dicts).

    Returns shared-alive fraction ``|alive_ID & alive_OOD| / |alive_ID|``,
    counts and fractions (of ``d_sae``) of OOD-only and ID-only latents,
    Jensen-Shannon divergence (bits) and Spearman correlation of the
    frequency profiles, ``fvu_gap = FVU_OOD - FVU_ID``, the ``top`` latents
    whose frequency shifts most (by ``|log10((f_OOD + e) / (f_ID + e))|`` with
    ``e = 1 / N`` of the smaller set), the most frequent OOD-only latents, and
    ``js_top_latents``: the latents with the largest terms of the JS divergence
    (:func:`sae_audit.metrics.js_contributions`; ``share`` of the total) with
    ``js_latents_for_half``, how many latents account for half of it. Given two
    bootstrapped accumulators (same number of replicates), also ``intervals``
    ``{metric: [low, high]}`` of every pair metric, replicate ``r`` of the pair
    using replicate ``r`` of each set.
    """
    id_stats = id_side.finish() if isinstance(id_side, CoverageAccumulator) else id_side
    ood_stats = ood_side.finish() if isinstance(ood_side, CoverageAccumulator) else ood_side
    out = _compare_points(id_stats, ood_stats, top)
    if isinstance(id_side, CoverageAccumulator) and isinstance(ood_side, CoverageAccumulator):
        reps = compare_replicates(id_side, ood_side)
        if reps is not None:
            out["intervals"] = interval_dict(reps)
    return out


def compare_replicates(id_acc: CoverageAccumulator, ood_acc: CoverageAccumulator) -> dict | None:
    """``{pair metric: [R] float64}`` from the replicates of both sets (``None`` unless both have them)."""
    a, b = id_acc.replicate_metrics(), ood_acc.replicate_metrics()
    if a is None or b is None or id_acc.rep["fire"].shape != ood_acc.rep["fire"].shape:
        return None
    fa, fb = id_acc.rep["fire"], ood_acc.rep["fire"]
    alive_a, alive_b = fa > 0, fb > 0
    n_alive = alive_a.sum(dim=1).double()
    shared = (alive_a & alive_b).sum(dim=1).double()
    d_sae = fa.shape[1]
    ood_only = (alive_b & ~alive_a).sum(dim=1).double()
    id_only = (alive_a & ~alive_b).sum(dim=1).double()
    return {
        "shared_alive": torch.where(n_alive > 0, shared / n_alive.clamp_min(1), torch.full_like(n_alive, float("nan"))),
        "n_ood_only": ood_only,
        "ood_only_fraction": ood_only / d_sae,
        "n_id_only": id_only,
        "id_only_fraction": id_only / d_sae,
        "js_divergence": metrics.js_divergence_rows(fa, fb),
        "spearman": metrics.spearman_rows(fa, fb),
        "fvu_gap": b["fvu"] - a["fvu"],
    }


def _compare_points(id_stats: dict, ood_stats: dict, top: int) -> dict:
    f_id = torch.tensor(id_stats["frequencies"], dtype=torch.float64)
    f_ood = torch.tensor(ood_stats["frequencies"], dtype=torch.float64)
    d_sae = f_id.numel()
    a_id, a_ood = f_id > 0, f_ood > 0
    n_alive_id = int(a_id.sum())
    shared = int((a_id & a_ood).sum())
    ood_only = a_ood & ~a_id
    id_only = a_id & ~a_ood
    fvu_id, fvu_ood = id_stats["fvu"], ood_stats["fvu"]
    eps = 1.0 / max(1, min(id_stats["n_inputs"], ood_stats["n_inputs"]))
    shift = ((f_ood + eps) / (f_id + eps)).log10()
    order = torch.argsort(shift.abs(), descending=True, stable=True)[:top]
    ood_only_idx = torch.nonzero(ood_only).flatten()
    ood_only_top = ood_only_idx[torch.argsort(f_ood[ood_only_idx], descending=True, stable=True)][:top]
    terms = metrics.js_contributions(f_id, f_ood)
    js = float(terms.sum()) if bool(torch.isfinite(terms).all()) else float("nan")
    js_order = torch.argsort(terms.nan_to_num(0.0), descending=True, stable=True)
    if js > 0:
        cum = torch.cumsum(terms[js_order], 0) / js
        for_half = int((cum < 0.5).sum()) + 1
    else:
        for_half = 0

    def latent_rows(indices: torch.Tensor) -> list[dict]:
        return [
            {
                "latent": int(j),
                "freq_id": float(f_id[j]),
                "freq_ood": float(f_ood[j]),
                "log10_shift": round(float(shift[j]), 4),
            }
            for j in indices
        ]

    js_rows = [dict(row, share=round(float(terms[row["latent"]]) / js, 4)) for row in latent_rows(js_order[:top])] \
        if js > 0 else []
    return {
        "shared_alive": nan_to_none(shared / n_alive_id if n_alive_id else float("nan")),
        "n_shared_alive": shared,
        "n_ood_only": int(ood_only.sum()),
        "ood_only_fraction": int(ood_only.sum()) / d_sae,
        "n_id_only": int(id_only.sum()),
        "id_only_fraction": int(id_only.sum()) / d_sae,
        "js_divergence": nan_to_none(metrics.js_divergence(f_id, f_ood)),
        "spearman": nan_to_none(metrics.spearman(f_id, f_ood)),
        "fvu_gap": nan_to_none(fvu_ood - fvu_id) if fvu_id is not None and fvu_ood is not None else None,
        "top_shifted": latent_rows(order),
        "top_ood_only": latent_rows(ood_only_top),
        "js_top_latents": js_rows,
        "js_latents_for_half": for_half,
    }

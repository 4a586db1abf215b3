"""Audit metrics as pure tensor functions (``shared/SPEC.md`` section 4).

Every function takes tensors (or array-likes) and returns a tensor or a float;
none keeps state. Streaming versions live in the suites, which reduce to these
formulas.
"""

from __future__ import annotations

import math

import torch


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Fraction of variance unexplained, ``sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``.

    Args:
        x, x_hat: ``[N, d]``. The denominator is the variance about the mean of
            ``x`` over the N rows (never about zero), so a constant offset in the
            data does not change the value.
    Returns:
        float; NaN when ``N < 2`` or ``x`` has zero variance.
    """
    x = x.double()
    num = (x - x_hat.double()).pow(2).sum()
    den = (x - x.mean(dim=0)).pow(2).sum()
    if x.shape[0] < 2 or den <= 0:
        return float("nan")
    return float(num / den)


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """``1 - fvu(x, x_hat)``."""
    return 1.0 - fvu(x, x_hat)


def cosine(x: torch.Tensor, x_hat: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Row-wise cosine similarity ``[N]`` of ``x`` and ``x_hat`` (``[N, d]``)."""
    x, x_hat = x.double(), x_hat.double()
    return (x * x_hat).sum(dim=1) / (x.norm(dim=1) * x_hat.norm(dim=1)).clamp_min(eps)


def effective_units(values: torch.Tensor) -> torch.Tensor:
    """Effective number of units ``(||z||_1 / ||z||_2)^2`` per row (SPEC sections 2 and 4).

    Args:
        values: ``[N, m]`` activations (sparse values ``[N, k]`` or dense codes
            ``[N, d_sae]``; zeros do not count).
    Returns:
        ``[N]`` float; 0 for an all-zero row.
    """
    l1 = values.abs().sum(dim=1)
    l2 = values.norm(dim=1)
    safe = torch.where(l2 > 0, l2, torch.ones_like(l2))
    return torch.where(l2 > 0, (l1 / safe).pow(2), torch.zeros_like(l2))


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> float:
    """Jensen-Shannon divergence in bits (base 2, so in [0, 1]) of two non-negative vectors.

    Both are normalised to sum 1 first (SPEC section 4: firing-frequency
    profiles). Returns NaN when either sums to zero.
    """
    p, q = torch.as_tensor(p).double(), torch.as_tensor(q).double()
    if p.sum() <= 0 or q.sum() <= 0:
        return float("nan")
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        mask = a > 0
        return (a[mask] * (a[mask] / b[mask]).log2()).sum()

    return float(0.5 * kl(p, m) + 0.5 * kl(q, m))


def rankdata(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..N with ties given their average rank (as ``scipy.stats.rankdata``)."""
    x = torch.as_tensor(x).double()
    n = x.numel()
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    ranks = torch.empty(n, dtype=torch.float64)
    # Group equal values and give each group the mean of its positions.
    new_group = torch.ones(n, dtype=torch.bool)
    new_group[1:] = sorted_x[1:] != sorted_x[:-1]
    group_id = torch.cumsum(new_group.long(), 0) - 1
    positions = torch.arange(1, n + 1, dtype=torch.float64)
    n_groups = int(group_id[-1]) + 1 if n else 0
    sums = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, group_id, positions)
    counts = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, group_id, torch.ones(n, dtype=torch.float64))
    ranks[order] = (sums / counts)[group_id]
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two equal-length vectors (average ranks for ties).

    Returns NaN when either vector is constant or shorter than 2.
    """
    ra, rb = rankdata(a), rankdata(b)
    if ra.numel() < 2:
        return float("nan")
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = ra.norm() * rb.norm()
    if den == 0:
        return float("nan")
    return float((ra * rb).sum() / den)


def auroc(scores_neg: torch.Tensor, scores_pos: torch.Tensor) -> float:
    """Area under the ROC curve for telling positives (e.g. OOD) from negatives (ID).

    Equals P(score_pos > score_neg) + 0.5 P(tie) (the Mann-Whitney U statistic
    divided by ``n_pos * n_neg``). NaN scores are dropped; returns NaN when a
    side is empty.
    """
    neg = torch.as_tensor(scores_neg).double().flatten()
    pos = torch.as_tensor(scores_pos).double().flatten()
    neg, pos = neg[~neg.isnan()], pos[~pos.isnan()]
    if neg.numel() == 0 or pos.numel() == 0:
        return float("nan")
    ranks = rankdata(torch.cat([neg, pos]))
    n_pos, n_neg = pos.numel(), neg.numel()
    u = ranks[n_neg:].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def log10_histogram(freqs: torch.Tensor, bins: int = 30, low: float = -7.0) -> dict:
    """Histogram of ``log10 f`` for alive latents (``f > 0``), in fixed bins from ``low`` to 0.

    Returns ``{"edges": [bins + 1 floats], "counts": [bins ints], "dead": int}``;
    frequencies below ``10**low`` land in the first bin.
    """
    f = torch.as_tensor(freqs).double()
    alive = f[f > 0]
    edges = torch.linspace(low, 0.0, bins + 1, dtype=torch.float64)
    logf = alive.log10().clamp(min=low, max=0.0)
    counts = torch.histc(logf, bins=bins, min=low, max=0.0) if alive.numel() else torch.zeros(bins)
    return {
        "edges": [round(float(e), 6) for e in edges],
        "counts": [int(c) for c in counts],
        "dead": int((f == 0).sum()),
    }


def nan_to_none(value: float) -> float | None:
    """JSON has no NaN: map NaN and infinities to ``None``."""
    return None if value is None or not math.isfinite(value) else float(value)


def monosemanticity_from_sums(u: torch.Tensor, v: torch.Tensor, w_sq: torch.Tensor) -> torch.Tensor:
    """Monosemanticity score from the linear-time sums (Pach et al. 2025, arXiv 2504.02821).

    With ``a_n`` the min-max-scaled activations of one latent and ``e_n`` unit
    judge embeddings: ``u = sum a_n``, ``v = sum a_n^2``, ``w_sq = ||sum a_n e_n||^2``.
    ``MS = (w_sq - v) / (u^2 - v)`` (the pairwise numerator and denominator
    ``sum_{n<m}`` are each half of these).

    Args:
        u, v, w_sq: ``[d_sae]`` float64.
    Returns:
        ``[d_sae]`` float64; NaN where the denominator is zero (a latent that
        fires on fewer than two inputs: dead for this metric).
    """
    den = u.double().pow(2) - v.double()
    num = w_sq.double() - v.double()
    # A latent active on one input only has den == 0 exactly in exact arithmetic;
    # allow for rounding relative to u^2.
    ok = den > 1e-12 * u.double().pow(2).clamp_min(1e-300)
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.full_like(den, float("nan")))


def monosemanticity_score(acts: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """Monosemanticity score (MS) of every latent, in linear time (Pach et al. 2025, arXiv 2504.02821).

    ``MS_j = sum_{n<m} a_nj a_mj cos(e_n, e_m) / sum_{n<m} a_nj a_mj`` where
    ``a_nj`` is latent ``j``'s activation on input ``n`` min-max scaled to
    [0, 1] over the N inputs, and ``e_n`` the input's judge embedding (unit
    normalised here). Computed with ``u = sum a``, ``v = sum a^2``,
    ``w = sum a e`` (SPEC section 4), so cost is ``O(N * d_sae * d_e)``, not
    ``O(N^2)``.

    Args:
        acts: ``[N, d_sae]`` non-negative activations (one row per image).
        embeddings: ``[N, d_e]`` judge embeddings of the same inputs.
    Returns:
        ``[d_sae]`` float64 in [-1, 1]; NaN for latents that are constant over
        the inputs or fire on fewer than two of them (zero denominator).
    Raises:
        ValueError: the row counts differ.
    """
    acts, emb = torch.as_tensor(acts).double(), torch.as_tensor(embeddings).double()
    if acts.shape[0] != emb.shape[0]:
        raise ValueError(f"acts has {acts.shape[0]} rows, embeddings {emb.shape[0]}")
    emb = emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-12)
    lo, hi = acts.min(dim=0).values, acts.max(dim=0).values
    span = hi - lo
    a = torch.where(span > 0, (acts - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(acts))
    u, v = a.sum(dim=0), a.pow(2).sum(dim=0)
    w = a.T @ emb  # [d_sae, d_e]
    return monosemanticity_from_sums(u, v, w.pow(2).sum(dim=1))


# --------------------------------------------------------------------------- replicates and intervals
# (SPEC section 5: every statistic is also computed on R bootstrap replicates; rows of [R, n] tensors.)


def percentile_interval(replicates, level: float = 0.95, min_finite: float = 0.9):
    """The percentile bootstrap interval of ``replicates`` (first dimension = replicates).

    Args:
        replicates: ``[R]`` or ``[R, ...]`` float values of a statistic on ``R``
            bootstrap replicates.
        level: coverage (0.95: the 2.5th and 97.5th percentiles, linear
            interpolation as ``numpy.percentile``).
        min_finite: the share of replicates that must be finite; NaN/inf
            replicates (a statistic undefined on that replicate) are dropped.
    Returns:
        For ``[R]``: ``(low, high)`` floats, or ``None`` when fewer than
        ``min_finite * R`` replicates are finite (or ``R == 0``). For ``[R, m]``:
        a list of ``m`` such pairs (``None`` per entry as above).
    """
    v = torch.as_tensor(replicates).double()
    if v.ndim > 1:
        return [percentile_interval(v[:, i], level, min_finite) for i in range(v.shape[1])]
    r = v.numel()
    v = v[torch.isfinite(v)]
    if r == 0 or v.numel() < min_finite * r or v.numel() == 0:
        return None
    q = torch.tensor([(1 - level) / 2, 1 - (1 - level) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(v, q).tolist()
    return (lo, hi)


def rankdata_rows(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (1..n, ties share their mean rank) of every row of ``x [R, n]``, like
    ``scipy.stats.rankdata(x, axis=1)``; ``[R, n]`` float64."""
    x = torch.as_tensor(x).double()
    r, n = x.shape
    if n == 0:
        return x.clone()
    sorted_x, order = torch.sort(x, dim=1, stable=True)
    new_group = torch.ones(r, n, dtype=torch.bool)
    new_group[:, 1:] = sorted_x[:, 1:] != sorted_x[:, :-1]
    gid = torch.cumsum(new_group.long().flatten(), 0) - 1  # global group ids, row-major
    pos = torch.arange(1, n + 1, dtype=torch.float64).repeat(r)
    n_groups = int(gid[-1]) + 1
    sums = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, gid, pos)
    counts = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, gid, torch.ones_like(pos))
    ranks_sorted = (sums / counts)[gid].view(r, n)
    return torch.empty_like(ranks_sorted).scatter_(1, order, ranks_sorted)


def spearman_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each row pair of ``a``, ``b`` (``[R, n]``); ``[R]`` float64, NaN for a
    constant row or ``n < 2`` (as :func:`spearman`)."""
    ra, rb = rankdata_rows(a), rankdata_rows(b)
    if ra.shape[1] < 2:
        return torch.full((ra.shape[0],), float("nan"), dtype=torch.float64)
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    den = ra.norm(dim=1) * rb.norm(dim=1)
    return torch.where(den > 0, (ra * rb).sum(dim=1) / torch.where(den > 0, den, torch.ones_like(den)),
                       torch.full_like(den, float("nan")))


def js_contributions(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per-entry terms of the Jensen-Shannon divergence (bits) of ``p`` and ``q`` (last dimension; rows
    normalised to sum 1): ``0.5 p log2(p / m) + 0.5 q log2(q / m)`` with ``m = (p + q) / 2``.

    They are non-negative and sum (over the last dimension) to :func:`js_divergence`, so they say which
    entries (latents) account for the divergence. A row summing to zero gives NaN.
    """
    p, q = torch.as_tensor(p).double(), torch.as_tensor(q).double()
    sp, sq = p.sum(dim=-1, keepdim=True), q.sum(dim=-1, keepdim=True)
    ok = (sp > 0) & (sq > 0)
    p = p / torch.where(sp > 0, sp, torch.ones_like(sp))
    q = q / torch.where(sq > 0, sq, torch.ones_like(sq))
    m = 0.5 * (p + q)
    safe_m = torch.where(m > 0, m, torch.ones_like(m))

    def term(a):
        return torch.where(a > 0, a * (torch.where(a > 0, a, torch.ones_like(a)) / safe_m).log2(),
                           torch.zeros_like(a))

    return torch.where(ok, 0.5 * term(p) + 0.5 * term(q), torch.full_like(p, float("nan")))


def js_divergence_rows(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """:func:`js_divergence` of each row pair of ``p``, ``q`` (``[R, n]`` non-negative); ``[R]`` float64."""
    return js_contributions(p, q).sum(dim=-1)


def weighted_auroc(scores_neg, scores_pos, w_neg=None, w_pos=None, chunk: int = 64):
    """AUROC of positives (OOD) vs negatives (ID) with per-input weights (weighted Mann-Whitney).

    ``AUROC = sum_{i,j} w_i v_j [1(s_j > s_i) + 0.5 * 1(s_j = s_i)] / (sum w * sum v)`` over negatives ``i``
    (weights ``w``) and positives ``j`` (weights ``v``): with integer weights, the AUROC of the sample in which
    each input appears that many times (the bootstrap replicate), as
    ``sklearn.metrics.roc_auc_score(..., sample_weight=...)``. Computed from one sort and per-replicate
    cumulative sums over tied groups (Hanley & McNeil 1982), ``O(R * n)`` after the sort.

    Args:
        scores_neg: ``[n_neg]``; scores_pos: ``[n_pos]`` (NaN scores are dropped with their weights).
        w_neg: ``[R, n_neg]`` or ``None`` (all ones); w_pos: ``[R, n_pos]`` or ``None``.
        chunk: replicates handled at once (bounds memory to ``chunk * (n_neg + n_pos)`` floats).
    Returns:
        ``[R]`` float64 (NaN where a side has zero total weight); a float when both weights are ``None``.
    """
    neg = torch.as_tensor(scores_neg).double().flatten()
    pos = torch.as_tensor(scores_pos).double().flatten()
    scalar = w_neg is None and w_pos is None
    r = 1 if scalar else (w_neg if w_neg is not None else w_pos).shape[0]
    wn = torch.ones(r, neg.numel(), dtype=torch.float64) if w_neg is None else torch.as_tensor(w_neg).double()
    wp = torch.ones(r, pos.numel(), dtype=torch.float64) if w_pos is None else torch.as_tensor(w_pos).double()
    keep_n, keep_p = ~neg.isnan(), ~pos.isnan()
    neg, pos, wn, wp = neg[keep_n], pos[keep_p], wn[:, keep_n], wp[:, keep_p]
    if neg.numel() == 0 or pos.numel() == 0:
        out = torch.full((r,), float("nan"), dtype=torch.float64)
        return float(out[0]) if scalar else out
    allv = torch.cat([neg, pos])
    uniq, group = torch.unique(allv, sorted=True, return_inverse=True)
    g_neg, g_pos = group[: neg.numel()], group[neg.numel():]
    n_g = uniq.numel()
    out = torch.empty(r, dtype=torch.float64)
    for start in range(0, r, chunk):
        a, b = wn[start:start + chunk], wp[start:start + chunk]
        neg_g = torch.zeros(a.shape[0], n_g, dtype=torch.float64).index_add_(1, g_neg, a)
        pos_g = torch.zeros(a.shape[0], n_g, dtype=torch.float64).index_add_(1, g_pos, b)
        below = torch.cumsum(neg_g, dim=1) - neg_g
        num = (pos_g * (below + 0.5 * neg_g)).sum(dim=1)
        den = a.sum(dim=1) * b.sum(dim=1)
        out[start:start + chunk] = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)),
                                               torch.full_like(den, float("nan")))
    return float(out[0]) if scalar else out


def cosine_distance(y: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
    """``d(y, y') = 1 - cos(y, y')`` per row of ``[B, d]`` (SPEC section 5); ``[B]`` float64 in [0, 2]."""
    return 1.0 - cosine(y, y2)


def kl_softmax(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(p) || softmax(q))`` in nats per row of ``[B, C]`` logits; ``[B]`` float64, >= 0."""
    lp = torch.log_softmax(torch.as_tensor(logits_p).double(), dim=-1)
    lq = torch.log_softmax(torch.as_tensor(logits_q).double(), dim=-1)
    return (lp.exp() * (lp - lq)).sum(dim=-1).clamp_min(0.0)


def fidelity_score(distance_sae, distance_ablation):
    """Downstream fidelity ``1 - E[d(y, y_sae)] / E[d(y, y_ablate)]`` (SPEC section 5).

    1: the output is untouched by splicing in the SAE's reconstruction; 0: no better than mean ablation;
    negative: worse. The vision analogue of SAELens' CE-loss score and SAEBench's core fidelity
    (Karvonen et al. 2025, arXiv 2503.09532).

    Args:
        distance_sae, distance_ablation: mean distances (floats or same-shape tensors, e.g. ``[R]`` replicates).
    Returns:
        Same shape; NaN where the ablation distance is not positive.
    """
    a = torch.as_tensor(distance_sae, dtype=torch.float64)
    b = torch.as_tensor(distance_ablation, dtype=torch.float64)
    out = torch.where(b > 0, 1.0 - a / torch.where(b > 0, b, torch.ones_like(b)), torch.full_like(a, float("nan")))
    return float(out) if out.ndim == 0 else out

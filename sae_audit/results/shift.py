"""Is an ID/OOD pair shifted beyond the ID-vs-ID noise floor? (SPEC section 5)

The noise floor of a pair metric is its value between two disjoint halves of
the ID set: what sampling alone produces. A pair is *shifted* on a metric when
its 95% interval lies entirely beyond the floor's 95% interval in the metric's
bad direction (:attr:`sae_audit.results.metric_info.MetricInfo.shift`):

- ``shift = 1`` (FVU gap, JS divergence, OOD-only and ID-only counts, fidelity
  gap): the pair's lower bound is above the floor's upper bound;
- ``shift = -1`` (shared alive, Spearman): the pair's upper bound is below the
  floor's lower bound;
- ``shift = 0`` (every AUROC): either of the two.

``None`` (unavailable) when either interval is missing: bootstrap off, the
floor unavailable (an ID set too small to split), or too few finite replicates.
"""

from __future__ import annotations

from sae_audit.results.metric_info import METRICS

RULE = ("A pair is shifted on a metric when its 95% interval lies entirely beyond the 95% interval of the same "
        "metric between two disjoint halves of the ID set (the noise floor), in the metric's bad direction: above "
        "it for the FVU gap, JS divergence, OOD-only and ID-only latents and the fidelity gap; below it for shared "
        "alive and Spearman ρ; either way for an AUROC.")


def is_shifted(interval, floor_interval, direction: int) -> bool | None:
    """The rule above for one metric: ``interval`` and ``floor_interval`` are ``[low, high]`` or ``None``."""
    if interval is None or floor_interval is None or direction is None:
        return None
    lo, hi = interval
    flo, fhi = floor_interval
    above, below = lo > fhi, hi < flo
    return bool(above if direction > 0 else below if direction < 0 else above or below)


def shifted_flags(pair: dict, floor: dict | None, metrics=None) -> dict[str, bool | None]:
    """``{metric: shifted?}`` for every metric with a shift rule that ``pair`` holds, judged against ``floor``
    (the same dict computed on the ID halves, or ``None`` / ``{"unavailable": ...}``).

    ``metrics``: the :class:`~sae_audit.results.MetricInfo` s the pair's dict holds (a suite's declared
    metrics); default the coverage metrics. Intervals are read at ``("intervals", key)`` in both dicts.
    """
    mine = pair.get("intervals") or {}
    theirs = (floor or {}).get("intervals") or {}
    out = {}
    for info in (METRICS.values() if metrics is None else metrics):
        key = info.key
        if info.scope != "pair" or info.shift is None or key not in pair:
            continue
        out[key] = is_shifted(mine.get(key), theirs.get(key), info.shift)
    return out

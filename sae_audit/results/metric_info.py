"""What each metric of the results document means: label, direction, formatting.

``results.json`` carries this table under ``metrics`` so a reader (a person, a
dashboard, ``sae-audit report diff``, a ``--fail-on`` condition) knows whether
a larger value is better without reading the code. Suites that add metrics
register them with :func:`register_metric`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class MetricInfo:
    """One metric.

    Attributes:
        key: the key in a per-dataset (``scope="dataset"``) or per-ID/OOD-pair
            (``scope="pair"``) metrics dict of the results document.
        label: short human-readable name for tables.
        higher_is_better: ``True``/``False``, or ``None`` when the metric is
            descriptive (neither direction is better, e.g. an input count).
        scope: ``"dataset"`` or ``"pair"``.
        description: one sentence.
        pct: format as a percentage.
        digits: decimals when formatting.
        in_report: shown in the report's metric tables.
        suite: the suite whose per-set or per-pair dicts hold the metric
            (``results["saes"][i]["suites"][suite]``); ``None`` for coverage's.
        interval: the keys leading to the metric's 95% interval ``[low, high]`` in
            the same dict (``("intervals", key)``), or ``None`` when it has none
            (descriptive counts).
        floor: for a pair metric, the keys leading to the noise floor's 95%
            interval in the pair dict (``("floor", key)``), or ``None``.
        shift: for pair metrics, the direction in which a pair is *shifted* beyond
            the noise floor (SPEC section 5): ``1`` its interval lies above the
            floor's, ``-1`` below it, ``0`` either way (an AUROC moves away from
            chance in both directions), ``None`` no shift rule.
    """

    key: str
    label: str
    higher_is_better: bool | None
    scope: str
    description: str = ""
    pct: bool = False
    digits: int = 3
    in_report: bool = True
    suite: str | None = None
    shift: int | None = None
    interval: tuple[str, ...] | None = None
    floor: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("interval", "floor"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, (value,))
            elif value is not None:
                object.__setattr__(self, name, tuple(value))

    def to_json(self) -> dict:
        d = asdict(self)
        out = {k: d[k] for k in ("label", "higher_is_better", "scope", "description")}
        if self.suite is not None:
            out["suite"] = self.suite
        if self.shift is not None:
            out["shift"] = self.shift
        out.update({k: list(getattr(self, k)) for k in ("interval", "floor") if getattr(self, k)})
        return out


METRICS: dict[str, MetricInfo] = {}


def register_metric(info: MetricInfo) -> MetricInfo:
    """Add (or replace) a metric's metadata; returns it. Raises ``ValueError`` on a bad scope."""
    if info.scope not in ("dataset", "pair"):
        raise ValueError(f"metric scope must be 'dataset' or 'pair', got {info.scope!r}")
    METRICS[info.key] = info
    return info


for _m in [
    MetricInfo("fvu", "FVU", False, "dataset", "fraction of variance unexplained, about the dataset mean"),
    MetricInfo("explained_variance", "explained variance", True, "dataset", "1 - FVU"),
    MetricInfo("cosine", "cosine(x, x̂)", True, "dataset", "mean cosine similarity of input and reconstruction"),
    MetricInfo("relative_mse", "relative MSE", False, "dataset", "mean ||x - x̂||² / ||x||²"),
    MetricInfo("alive_fraction", "alive latents", True, "dataset", "share of latents that fire at least once",
               pct=True),
    MetricInfo("dead_fraction", "dead latents", False, "dataset", "share of latents that never fire", pct=True),
    MetricInfo("dense_fraction", "dense latents (f > threshold)", False, "dataset",
               "share of latents firing on more than the dense threshold of inputs", pct=True),
    MetricInfo("l0_mean", "L0 (mean)", None, "dataset", "mean number of non-zero latents per input", digits=2),
    MetricInfo("effective_units_mean", "effective units (mean)", None, "dataset",
               "mean (||z||₁/||z||₂)² per input", digits=2),
    MetricInfo("n_inputs", "inputs (tokens)", None, "dataset", "inputs the SAE read", interval=()),
    MetricInfo("n_nonfinite", "non-finite inputs dropped", False, "dataset", "inputs with NaN or inf, skipped",
               interval=()),
    MetricInfo("fvu_gap", "FVU gap (OOD − ID)", False, "pair",
               "FVU on the OOD set minus FVU on the ID set: OOD variance the dictionary fails to cover", shift=1),
    MetricInfo("shared_alive", "shared alive (of ID alive)", True, "pair",
               "|alive_ID ∩ alive_OOD| / |alive_ID|", pct=True, shift=-1),
    MetricInfo("n_ood_only", "OOD-only latents", None, "pair", "latents alive on OOD and dead on ID", digits=1,
               shift=1),
    MetricInfo("n_id_only", "ID-only latents", None, "pair", "latents alive on ID and dead on OOD", digits=1,
               shift=1),
    MetricInfo("js_divergence", "JS divergence of frequencies (bits)", False, "pair",
               "Jensen-Shannon divergence (base 2) of the normalised frequency profiles", shift=1),
    MetricInfo("spearman", "Spearman ρ of frequencies", True, "pair",
               "rank correlation of the ID and OOD frequency profiles", shift=-1),
    # Suites' metrics: found under results["saes"][i]["suites"][suite]; not in the coverage tables.
    MetricInfo("ms_mean", "monosemanticity (mean)", True, "dataset", "mean MS over scored latents",
               in_report=False, suite="monosemanticity"),
    MetricInfo("purity_mean", "class purity (mean)", True, "dataset", "mean purity of the latents' top images",
               in_report=False, suite="purity"),
    MetricInfo("auroc_fvu", "AUROC of per-image FVU", None, "pair", "OOD detection by per-image FVU (0.5 chance)",
               in_report=False, suite="ood-detection", shift=0),
    MetricInfo("auroc_l0", "AUROC of per-image L0", None, "pair", "OOD detection by per-image L0 (0.5 chance)",
               in_report=False, suite="ood-detection", shift=0),
    MetricInfo("auroc_effective_units", "AUROC of effective units", None, "pair",
               "OOD detection by per-image effective units (0.5 chance)", in_report=False, suite="ood-detection",
               shift=0),
    MetricInfo("auroc_rarity", "AUROC of latent rarity", None, "pair",
               "OOD detection by the rarity of the fired latents under the ID profile, leave-one-out (0.5 chance)",
               in_report=False, suite="ood-detection", shift=0),
    MetricInfo("fidelity", "downstream fidelity", True, "dataset",
               "1 - E[d(y, y_sae)] / E[d(y, y_ablate)] with d = 1 - cos of the model's output", in_report=False,
               suite="fidelity"),
    MetricInfo("fidelity_gap", "fidelity gap (ID − OOD)", False, "pair",
               "downstream fidelity on ID minus on OOD: what the dictionary fails to carry out of distribution",
               in_report=False, suite="fidelity", shift=1),
    MetricInfo("fidelity_kl_gap", "fidelity gap, KL of logits (ID − OOD)", False, "pair",
               "the KL-based fidelity on ID minus on OOD (models with a classification head)", in_report=False,
               suite="fidelity", shift=1),
    MetricInfo("auroc_output_distance", "AUROC of output distance", None, "pair",
               "OOD detection by the per-image distance d(y, y_sae) of the spliced output (0.5 chance)",
               in_report=False, suite="fidelity", shift=0),
]:
    # Where the interval and the floor are: beside the value, in one shape for every metric (SPEC section 5).
    if _m.interval is None:
        _m = replace(_m, interval=("intervals", _m.key))
    elif not _m.interval:  # a descriptive count: no interval
        _m = replace(_m, interval=None)
    if _m.scope == "pair" and _m.shift is not None:
        _m = replace(_m, floor=("floor", _m.key))
    register_metric(_m)


def metrics_table() -> dict[str, dict]:
    """The ``metrics`` block of a results document."""
    return {k: m.to_json() for k, m in METRICS.items()}


def metrics_of(scope: str) -> list[MetricInfo]:
    """The coverage metrics of ``scope`` shown in the report's tables."""
    return [m for m in METRICS.values() if m.scope == scope and m.in_report and m.suite is None]

"""The "Firing concentration" report section, rendered from the results document alone."""

from __future__ import annotations

SUITE = "concentration"


def _num(value, digits: int = 2, pct: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.1f}%" if pct else f"{value:.{digits}f}"


def _with_ci(d: dict, key: str, digits: int = 2, pct: bool = False) -> str:
    ci = d.get(f"{key}_ci")
    text = _num(d.get(key), digits, pct)
    return text if ci is None else f"{text} [{_num(ci[0], digits, pct)}, {_num(ci[1], digits, pct)}]"


def _shifted(pair: dict, key: str) -> str:
    return {True: "yes", False: "no"}.get(pair.get(f"{key}_shifted"), "n/a")


def concentration_section(results: dict):
    """The section, or ``None`` when the ``concentration`` suite did not run.

    Returned as sae-audit's section model (:mod:`sae_audit.report.view`): the
    host renders it into both reports, escapes every text and right-aligns
    numeric cells; the figure is drawn on demand.
    """
    from sae_audit.report.view import Figure, Section, Table

    saes = [s for s in results.get("saes", []) if SUITE in (s.get("suites") or {})]
    if not saes:
        return None
    blocks: list = [
        "How many latents carry each image set's firings. Firing entropy H (bits) of the distribution of "
        "firings over latents, the effective number of latents 2^H, and the share of firings held by the "
        "top 1% of latents; per ID/OOD pair, the entropy drop H_ID − H_OOD and the top-1% share gap, beside "
        "their ID-vs-ID noise floor (two halves of the ID set). Intervals are 95% Poisson-bootstrap "
        "intervals; a pair is shifted when its interval lies above the floor's.",
    ]
    for i, sae in enumerate(saes):
        data = sae["suites"][SUITE]
        sets = {n: d for n, d in data.get("datasets", {}).items() if "skipped" not in d}
        blocks.append(Table(f"{sae['label']}: firing concentration per image set",
                            ["image set", "firing entropy (bits)", "effective latents", "top-1% share"],
                            [[n, _with_ci(d, "entropy_bits"), _num(d.get("effective_latents"), 0),
                              _with_ci(d, "top1pct_share", pct=True)] for n, d in sets.items()]))
        pairs = data.get("pairs", [])
        if pairs:
            blocks.append(Table(
                f"{sae['label']}: ID vs OOD (lower is better)",
                ["OOD set", "entropy drop (bits)", "ID-vs-ID floor", "shifted", "top-1% share gap",
                 "ID-vs-ID floor", "shifted"],
                [[p["ood"], _with_ci(p, "entropy_drop"), _with_ci(p, "entropy_drop_floor"),
                  _shifted(p, "entropy_drop"), _with_ci(p, "top1pct_share_gap", pct=True),
                  _with_ci(p, "top1pct_share_gap_floor", pct=True), _shifted(p, "top1pct_share_gap")]
                 for p in pairs]))
        if sets:
            blocks.append(Figure(f"curve-{i}", f"Share of firings held by the most-firing latents, per image set, "
                                               f"for {sae['label']}", lambda sets=sets: _draw(sets),
                                 caption=f"{sae['label']}: concentration curves (higher and further left: "
                                         "fewer latents carry the set)"))
    return Section("firing-concentration", "Firing concentration", blocks)


def _draw(sets: dict):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(5.5, 3.4))
    ax = fig.add_subplot()
    for name, d in sets.items():
        xs, ys = d.get("curve_fractions") or [], d.get("curve") or []
        points = [(x, y) for x, y in zip(xs, ys) if y is not None]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("fraction of latents, most-firing first")
    ax.set_ylabel("share of firings")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig

"""What changed between two audits: ``sae-audit report diff A.json B.json``.

SAEs are matched by label and image sets by name. For every metric both
audits hold (the coverage metrics, and the metrics the suites of either audit
declared in its ``metrics`` table), the diff shows A, B, the change B − A and, from the metric's
``higher_is_better``, whether that change is better or worse (in words, so
colour is never needed). For each matched SAE and image set it lists the
latents whose firing frequency changed most (``|log10((f_B + ε) / (f_A + ε))|``,
ε = 1 / the smaller input count); this is meaningful when both audits ran the
same SAE weights, which the diff checks through ``weights_sha256`` and says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sae_audit.report.markdown import md_escape as md
from sae_audit.results.metric_info import MetricInfo, document_metrics, is_number, metric_items
from sae_audit.report.view import fmt


@dataclass
class MetricChange:
    sae: str
    where: str  # an image set name, or "ID vs OOD" for pair metrics
    metric: str
    a: float | int | None
    b: float | int | None
    info: MetricInfo | None = None

    @property
    def delta(self) -> float | None:
        if self.a is None or self.b is None:
            return None
        return self.b - self.a

    def judgement(self) -> str:
        """``better``, ``worse``, ``same`` or ``""`` (no direction, or a value is missing)."""
        info = self.info
        d = self.delta
        if d is None or info is None or info.higher_is_better is None:
            return ""
        if d == 0 or math.isclose(self.a, self.b, rel_tol=1e-12, abs_tol=1e-15):
            return "same"
        return "better" if (d > 0) == info.higher_is_better else "worse"


@dataclass
class Diff:
    a_name: str
    b_name: str
    header: list[list[str]]
    changes: list[MetricChange] = field(default_factory=list)
    latents: list[tuple[str, str, list[dict], str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _fmt_delta(info: MetricInfo | None, d) -> str:
    if d is None:
        return "n/a"
    if info is not None and info.pct:
        return f"{100 * d:+.1f} pp"
    if isinstance(d, int):
        return f"{d:+,}"
    if d != 0 and abs(d) < 1e-3:
        return f"{d:+.2e}"
    return f"{d:+.3f}"


def diff_results(a: dict, b: dict, a_name: str = "A", b_name: str = "B", top: int = 10) -> Diff:
    """Compare two (loaded, validated) results documents. Pure: no I/O."""
    header = []
    for key, get in [
        ("model", lambda r: r["model"]["name"]),
        ("model revision", lambda r: r["model"].get("revision") or "n/a"),
        ("created", lambda r: r.get("created", "n/a")),
        ("sae-audit", lambda r: f"{r['tool'].get('version')} (git {(r['tool'].get('git_revision') or 'n/a')[:12]})"),
        ("device / dtype", lambda r: f"{r['model'].get('device')} / {r['model'].get('dtype')}"),
        ("image sets", lambda r: ", ".join(f"{d['name']} ({d['role'].upper()}, {d['n_images']:,} images)"
                                           for d in r["datasets"])),
    ]:
        va, vb = str(get(a)), str(get(b))
        header.append([key, va, vb, "same" if va == vb else "differs"])
    out = Diff(a_name, b_name, header)

    sets_a = {d["name"]: d for d in a["datasets"]}
    sets_b = {d["name"]: d for d in b["datasets"]}
    for name in sets_a.keys() & sets_b.keys():
        ha, hb = sets_a[name].get("content_hash"), sets_b[name].get("content_hash")
        if ha and hb and ha != hb:
            out.notes.append(f"image set {name} has different content in A and B ({ha[:19]}… vs {hb[:19]}…)")
    for only, side in ((sets_a.keys() - sets_b.keys(), a_name), (sets_b.keys() - sets_a.keys(), b_name)):
        for name in sorted(only):
            out.notes.append(f"image set {name} is only in {side}")

    metrics = document_metrics(a)
    metrics.update(document_metrics(b))
    shown = [m for m in metrics.values() if m.in_report]
    saes_a = {s["label"]: s for s in a["saes"]}
    saes_b = {s["label"]: s for s in b["saes"]}
    for only, side in ((saes_a.keys() - saes_b.keys(), a_name), (saes_b.keys() - saes_a.keys(), b_name)):
        for label in sorted(only):
            out.notes.append(f"SAE {label} is only in {side}")
    for label in [s["label"] for s in a["saes"] if s["label"] in saes_b]:
        sa, sb = saes_a[label], saes_b[label]
        for name in [n for n in sets_a if n in sets_b]:
            da, db = sa["datasets"].get(name), sb["datasets"].get(name)
            if da is None or db is None:
                continue
            for m in [m for m in shown if m.scope == "dataset"]:
                va, vb = _value(sa, m, name), _value(sb, m, name)
                if (m.key in da or m.key in db) if m.suite is None else (va is not None or vb is not None):
                    out.changes.append(MetricChange(label, name, m.key, va, vb, m))
        pairs_b = {(p["id"], p["ood"]) for p in sb["pairs"]}
        for pa in sa["pairs"]:
            if (pa["id"], pa["ood"]) not in pairs_b:
                continue
            for m in [m for m in shown if m.scope == "pair"]:
                va, vb = _value(sa, m, pa["ood"], pa["id"]), _value(sb, m, pa["ood"], pa["id"])
                if m.suite is None or va is not None or vb is not None:
                    out.changes.append(MetricChange(label, f"{pa['id']} vs {pa['ood']}", m.key, va, vb, m))
        wa, wb = sa.get("weights_sha256"), sb.get("weights_sha256")
        same_weights = wa is not None and wa == wb
        if sa["config"]["d_sae"] != sb["config"]["d_sae"]:
            out.notes.append(f"SAE {label}: d_sae differs ({sa['config']['d_sae']} vs {sb['config']['d_sae']}); "
                             "latents are not compared")
            continue
        caveat = ("same SAE weights in A and B" if same_weights else
                  "the SAE weights differ or are not recorded: latent j of A need not be latent j of B")
        for name in [n for n in sets_a if n in sets_b]:
            da, db = sa["datasets"].get(name), sb["datasets"].get(name)
            if not da or not db or "frequencies" not in da or "frequencies" not in db:
                continue
            fa, fb = np.asarray(da["frequencies"], float), np.asarray(db["frequencies"], float)
            eps = 1.0 / max(1, min(da.get("n_inputs", 1), db.get("n_inputs", 1)))
            shift = np.log10((fb + eps) / (fa + eps))
            order = np.argsort(-np.abs(shift), kind="stable")[:top]
            rows = [{"latent": int(j), "freq_a": float(fa[j]), "freq_b": float(fb[j]),
                     "log10_shift": float(shift[j])} for j in order if shift[j] != 0]
            out.latents.append((label, name, rows, caveat))
    return out


def _value(sae: dict, info: MetricInfo, name: str, id_name: str | None = None):
    """The number metric ``info`` has for image set ``name`` (or the pair ``id_name`` vs ``name``); else ``None``."""
    for n, i, v in metric_items(sae, info):
        if n == name and (id_name is None or i == id_name):
            return v if is_number(v) else None
    return None


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(md(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(md(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render_diff_markdown(d: Diff) -> str:
    """The diff as GitHub/Hugging Face Markdown (every name escaped)."""
    parts = [f"# Audit diff: {md(d.a_name)} → {md(d.b_name)}\n",
             "Δ is B − A; *better*/*worse* follow each metric's direction (blank: the metric has none).\n",
             _table(["", "A", "B", ""], d.header)]
    if d.notes:
        parts.append("\n".join(f"- {md(n)}" for n in d.notes) + "\n")
    by_sae: dict[str, list[MetricChange]] = {}
    for c in d.changes:
        by_sae.setdefault(c.sae, []).append(c)
    for sae, changes in by_sae.items():
        parts.append(f"## {md(sae)}\n")
        rows = []
        for c in changes:
            info = c.info
            label = (info.label + (f" (suite {info.suite})" if info.suite else "")) if info else c.metric
            rows.append([c.where, label, fmt(c.a, info.digits if info else 3, info.pct if info else False),
                         fmt(c.b, info.digits if info else 3, info.pct if info else False),
                         _fmt_delta(info, c.delta), c.judgement()])
        parts.append(_table(["image set(s)", "metric", "A", "B", "Δ (B − A)", "change"], rows))
        lat = [x for x in d.latents if x[0] == sae]
        if lat:
            parts.append("<details>\n<summary>Latents whose firing frequency changed most</summary>\n")
            for _, name, rows_l, caveat in lat:
                parts.append(f"**{md(name)}** ({md(caveat)})\n")
                if rows_l:
                    parts.append(_table(["latent", "f A", "f B", "log10 (f B / f A)"],
                                        [[str(r["latent"]), fmt(r["freq_a"], 4), fmt(r["freq_b"], 4),
                                          f"{r['log10_shift']:+.2f}"] for r in rows_l]))
                else:
                    parts.append("_no latent changed_\n")
            parts.append("</details>\n")
    return "\n".join(parts)

"""The latent explorer: ``latents.html``, every alive latent of every audited SAE in one self-contained page.

One table per SAE, one row per latent alive on at least one image set: its
firing frequency on each set, its log10 frequency shift on each OOD set
(``log10((f_OOD + e) / (f_ID + e))``, as :func:`sae_audit.suites.latents.latent_table`),
its monosemanticity score and class purity on the ID set when those suites
ran, and, for the latents the pictures suite kept pictures of (the most
shifted and the most frequent OOD-only latents of each OOD set), their top
images with the patch heatmap drawn over them. Rows start sorted by the
largest |shift| over the OOD sets.

Bounded size: pictures only for those latents (at most
``N_SHIFTED + N_OOD_ONLY`` per SAE and OOD set, ``MAX_PICS_PER_SET`` images per
set), the rest as numbers, so the page grows by the row markup and at most 16
bytes per number and alive latent (``benchmarks/explorer_size.py`` measures
it; ``tests/report/test_explorer.py`` checks the bound at 65,536 latents).
The first :data:`MAX_OPEN_ROWS` rows per SAE are open, the others folded. It is a plain HTML table, complete and readable with JavaScript
off; a small inline script adds sorting by any column and filtering
(progressive enhancement). No external URL, no network.
"""

from __future__ import annotations

import math

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup, escape

from sae_audit.report import heatmaps
from sae_audit.report.galleries import StoredLatent, stored_latents
from sae_audit.report.glance import model_name
from sae_audit.report.html import CSS_TEXT_COLOURS, data_uri

EXPLORER_FILE = "latents.html"
#: Images per image set shown for a latent with pictures.
MAX_PICS_PER_SET = 3
#: Side at which an explorer picture is shown (CSS pixels).
EXPLORER_PX = 64
#: Rows per SAE in the open table; the other alive latents follow in a folded table (``<details>``),
#: which a browser does not lay out until it is opened, so a 65,536-latent page opens quickly.
MAX_OPEN_ROWS = 2000


def _num(v: float, kind: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if kind == "shift":
        return f"{v:+.2f}"
    if kind == "freq":
        return "0" if v == 0 else f"{v:.3g}"
    return f"{v:.3f}"


def _pictures_cell(lats: list[StoredLatent]) -> Markup:
    """The top images of one latent: ID images once, then each OOD set that kept pictures of it."""
    parts, seen_id = [], False
    for lat in lats:
        vmax = max((m.grid.max() for side in ("id", "ood") for p in lat.pics[side][:MAX_PICS_PER_SET]
                    if (m := heatmaps.decode(p, lat.grid)) is not None and m.grid.size), default=0.0)
        for side in ("id", "ood"):
            if side == "id" and seen_id:
                continue
            set_name = lat.id_name if side == "id" else lat.ood_name
            imgs = []
            for pic in lat.pics[side][:MAX_PICS_PER_SET]:
                thumb = heatmaps.thumb_bytes(pic)
                pmap = heatmaps.decode(pic, lat.grid)
                item = pic.get("item", pic.get("image"))
                act = _num(pic.get("activation"), "ms")
                if pmap is not None:
                    r, c, _ = pmap.peak()
                    png = heatmaps.overlay_png(thumb, pmap, float(vmax))
                    alt = (f"{set_name} image {item}, activation {act}, heatmap strongest on patch row {r + 1}, "
                           f"column {c + 1}" + ("" if thumb else " (image unreadable)"))
                elif thumb is not None:
                    png, alt = thumb, f"{set_name} image {item}, activation {act}"
                else:
                    continue
                imgs.append(f'<img src="{data_uri(png)}" alt="{escape(alt)}" width="{EXPLORER_PX}" '
                            f'height="{EXPLORER_PX}">')
            if imgs:
                label = "ID" if side == "id" else escape(set_name)
                parts.append(f'<span class="set"><span class="lab">{label}</span>{"".join(imgs)}</span>')
            seen_id = seen_id or side == "id"
    return Markup("".join(parts))


def _breakable(name: str) -> Markup:
    """``name`` escaped, with line-break opportunities after ``:``, ``_``, ``-`` and ``/`` (long set names)."""
    out = str(escape(name))
    for ch in ":_-/":
        out = out.replace(ch, ch + "<wbr>")
    return Markup(out)


def _header(sets: list[str], oods: list[str], extra: list[str]) -> Markup:
    """Two header rows: groups (frequency per set, shift per OOD set), then one column per number.

    Every sortable column header carries ``data-col`` (its cell index in a body row) and ``data-kind``.
    """
    top = ['<th scope="col" rowspan="2" data-col="0" data-kind="latent">latent</th>',
           f'<th scope="colgroup" colspan="{len(sets)}">firing frequency f</th>']
    if oods:
        top.append(f'<th scope="colgroup" colspan="{len(oods)}">log10 shift (OOD vs ID)</th>')
    col = 1 + len(sets) + len(oods)
    for head in extra:
        top.append(f'<th scope="col" rowspan="2" data-col="{col}" data-kind="score">{escape(head)}</th>')
        col += 1
    top.append('<th scope="col" rowspan="2">top images with heatmaps</th>')
    sub = [f'<th scope="col" data-col="{1 + k}" data-kind="freq">{_breakable(n)}{" (ID)" if k == 0 else ""}</th>'
           for k, n in enumerate(sets)]
    sub += [f'<th scope="col" data-col="{1 + len(sets) + k}" data-kind="shift">{_breakable(n)}</th>'
            for k, n in enumerate(oods)]
    return Markup(f"<thead><tr>{''.join(top)}</tr>\n<tr>{''.join(sub)}</tr></thead>")


def explorer_tables(results: dict) -> list[dict]:
    """Per SAE: ``{"label", "anchor", "header" (the ``<thead>`` HTML), "tbody", "rest", "n_rest", "n_alive", "d_sae", "n_pictured",
    "no_map"}``.

    ``tbody`` is the HTML of the first :data:`MAX_OPEN_ROWS` rows, sorted by the largest |shift| (then
    latent), ``rest`` that of the ``n_rest`` others (shown folded).
    """
    from sae_audit.suites.latents import latent_table

    datasets = results["datasets"]
    id_name = next(d["name"] for d in datasets if d["role"] == "id")
    ood_names = [d["name"] for d in datasets if d["role"] == "ood"]
    sets = [id_name] + ood_names
    table = latent_table(results)
    pictured: dict[int, dict[int, list[StoredLatent]]] = {}
    no_map: dict[int, str] = {}
    for group in stored_latents(results):
        for lat in group:
            pictured.setdefault(lat.sae_index, {}).setdefault(lat.latent, []).append(lat)
            if lat.no_map_reason:
                no_map[lat.sae_index] = lat.no_map_reason
    out = []
    for i, s in enumerate(results["saes"]):
        start = sum(int(x["config"]["d_sae"]) for x in results["saes"][:i])  # latent_table: SAEs in order
        t = table.iloc[start:start + int(s["config"]["d_sae"])]
        freqs = np.stack([t[f"freq:{n}"].to_numpy() for n in sets], axis=1)
        alive = (freqs > 0).any(axis=1)
        shifts = np.stack([t[f"log10_shift:{n}"].to_numpy() for n in ood_names], axis=1) if ood_names else \
            np.zeros((len(t), 0))
        extra = [(f"ms:{id_name}", f"MS ({id_name})"), (f"purity:{id_name}", f"purity ({id_name})")]
        extra = [(col, head) for col, head in extra if col in t.columns]
        latents = t["latent"].to_numpy()
        order_key = np.abs(shifts).max(axis=1) if shifts.shape[1] else np.zeros(len(t))
        idx = np.nonzero(alive)[0]
        idx = idx[np.lexsort((latents[idx], -order_key[idx]))]
        cols = [t[col].to_numpy() for col, _ in extra]
        pics = pictured.get(i, {})
        lines = []
        for r in idx:
            j = int(latents[r])
            cells = [_num(float(v), "freq") for v in freqs[r]] + [_num(float(v), "shift") for v in shifts[r]]
            cells += [_num(float(c[r]), "ms") for c in cols]
            pic = _pictures_cell(pics[j]) if j in pics else ""
            # Cells hold numbers or "n/a" only (escaped anyway); </td> is optional in HTML and left out.
            lines.append(f"<tr><th scope=row>{j}</th>" + "".join(f"<td>{escape(c)}" for c in cells)
                         + f"<td>{pic}</tr>")
        out.append({"label": s["label"], "anchor": f"sae-{i}", "header": _header(sets, ood_names, [h for _, h in extra]),
                    "tbody": Markup("\n".join(lines[:MAX_OPEN_ROWS])), "rest": Markup("\n".join(lines[MAX_OPEN_ROWS:])),
                    "n_rest": max(0, len(lines) - MAX_OPEN_ROWS),
                    "n_alive": int(alive.sum()), "d_sae": int(s["config"]["d_sae"]),
                    "n_pictured": len(pics), "no_map": no_map.get(i, "")})
    return out


def render_explorer(results: dict) -> str:
    """``latents.html`` for ``results`` (one self-contained page; see the module docstring)."""
    env = Environment(loader=PackageLoader("sae_audit.report", "templates"),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    id_name = next(d["name"] for d in results["datasets"] if d["role"] == "id")
    return env.get_template("latents.html.j2").render(
        title=f"Latent explorer: {model_name(results)}", tables=explorer_tables(results), id_name=id_name,
        created=results.get("created"), version=results.get("tool", {}).get("version", "?"),
        max_pics=MAX_PICS_PER_SET, max_open=MAX_OPEN_ROWS, colour_map=heatmaps.COLOUR_MAP, colours=CSS_TEXT_COLOURS,
    )


__all__ = ["EXPLORER_FILE", "MAX_OPEN_ROWS", "MAX_PICS_PER_SET", "explorer_tables", "render_explorer"]

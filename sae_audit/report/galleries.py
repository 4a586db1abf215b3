"""Galleries of latent pictures with patch heatmaps, from the pictures suite's part of the results document.

:func:`stored_latents` lists what the pictures suite stored (per SAE and ID/OOD
pair, the most shifted and OOD-only latents with their top images);
:func:`latent_gallery` turns one latent into a :class:`~sae_audit.report.view.Gallery`:
each top image as its central square with, beside it, the same square with the
latent's activation per patch drawn over it (:mod:`sae_audit.report.heatmaps`),
and one colour scale per latent. Nothing is read but the results document: an
image that could not be read at audit time has no thumbnail (its heatmap is
drawn alone, or the gallery says it is missing).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sae_audit.report import heatmaps
from sae_audit.report.view import ColourScale, Details, Gallery, Image, fmt

#: Shifted latents per pair in the report's galleries (the latent explorer shows every stored one).
REPORT_SHIFTED = 5
NO_MAP_OLD = "this results file records no per-patch values (written before sae-audit kept them)"


@dataclass
class StoredLatent:
    """One latent's stored pictures for one ID/OOD pair of one SAE."""

    sae_index: int
    pair_index: int
    sae_label: str
    id_name: str
    ood_name: str
    latent: int
    why: str
    freq_id: float | None
    freq_ood: float | None
    log10_shift: float | None
    pics: dict = field(default_factory=dict)  # {"id": [pic], "ood": [pic]}
    grid: dict | None = None
    no_map_reason: str = ""


def stored_latents(results: dict) -> list[list[StoredLatent]]:
    """Per (SAE, pair), in order, the latents the pictures suite stored (empty when it did not run)."""
    groups = []
    for i, s in enumerate(results["saes"]):
        entry = (s.get("suites") or {}).get("pictures") or {}
        for p_i, pair in enumerate(entry.get("pairs") or []):
            grid = pair.get("patch_grid")
            reason = pair.get("no_map_reason") or ("" if grid else NO_MAP_OLD)
            group = []
            for lat in pair.get("latents") or []:
                group.append(StoredLatent(
                    i, p_i, s["label"], pair["id"], pair["ood"], int(lat["latent"]), str(lat.get("why", "")),
                    lat.get("freq_id"), lat.get("freq_ood"), lat.get("log10_shift"),
                    {"id": list(lat.get("id") or []), "ood": list(lat.get("ood") or [])}, grid, reason))
            groups.append(group)
    return groups


def report_selection(group: list[StoredLatent]) -> list[StoredLatent]:
    """The latents of one pair the report shows: the first :data:`REPORT_SHIFTED` shifted, every OOD-only one."""
    shifted = [lat for lat in group if lat.why == "shifted"][:REPORT_SHIFTED]
    return shifted + [lat for lat in group if lat.why != "shifted"]


def title(lat: StoredLatent) -> str:
    return (f"latent {lat.latent} ({lat.why}): f ID {fmt(lat.freq_id, 4)}, f OOD {fmt(lat.freq_ood, 4)}, "
            f"log10 shift {fmt(lat.log10_shift, 2)}")


def _scale_max(lat: StoredLatent, sides) -> float:
    vals = [heatmaps.decode(p, lat.grid) for side in sides for p in lat.pics[side]]
    peaks = [m.grid.max() for m in vals if m is not None and m.grid.size]
    return float(max(peaks)) if peaks else 0.0


def latent_gallery(lat: StoredLatent, name_prefix: str, sides=("id", "ood"), max_per_side: int | None = None,
                   with_original: bool = True) -> Gallery:
    """One latent's top images as a :class:`Gallery` (ID first, then OOD), heatmaps beside the originals.

    Args:
        name_prefix: file-name stem prefix of the images (unique per gallery).
        max_per_side: show at most this many images per set.
        with_original: keep the original beside each heatmap (``False``: the heatmap alone, the grey
            image still visible under the colours).
    """
    vmax = _scale_max(lat, sides)
    images, missing, any_map = [], 0, False
    for side in sides:
        set_name, label = (lat.id_name, "ID") if side == "id" else (lat.ood_name, "OOD")
        for rank, pic in enumerate(lat.pics[side][:max_per_side]):
            thumb = heatmaps.thumb_bytes(pic)
            pmap = heatmaps.decode(pic, lat.grid)
            item = pic.get("item", pic.get("image"))
            act = fmt(pic.get("activation"))
            alt = f"{set_name} image {item}, activation {act} of latent {lat.latent}"
            caption = f"{label} #{rank + 1} · {act}"
            name = f"{name_prefix}-{side}{rank}"
            overlay = overlay_alt = None
            if pmap is not None:
                any_map = True
                r, c, peak = pmap.peak()
                rows, cols = pmap.grid.shape
                overlay = heatmaps.overlay_png(thumb, pmap, vmax)
                overlay_alt = (f"Heatmap of latent {lat.latent} on {set_name} image {item}: strongest on patch "
                               f"row {r + 1}, column {c + 1} of {rows} x {cols} ({fmt(peak)})")
                if len(pmap.prefix):
                    caption += f" · CLS/registers {fmt(float(pmap.prefix.max()))}"
            if thumb is None and overlay is None:
                missing += 1
                continue
            if thumb is None:  # the image could not be read at audit time: the heatmap alone
                images.append(Image(name, overlay_alt + " (the image itself could not be read)", overlay,
                                    caption=caption + " · image unreadable"))
            elif overlay is not None and not with_original:
                images.append(Image(name, overlay_alt + f"; activation {act}", overlay, caption=caption))
            else:
                images.append(Image(name, alt, thumb, caption=caption, overlay=overlay,
                                    overlay_alt=overlay_alt or ""))
    notes = []
    if missing:
        notes.append(f"{missing} image(s) could not be read at audit time")
    if not images and not missing:
        notes.append("no image")
    scale = None
    if any_map:
        scale = ColourScale(heatmaps.colour_bar_png(), "0", fmt(vmax),
                            f"activation of latent {lat.latent} per patch ({heatmaps.COLOUR_MAP}: dark purple low, "
                            f"yellow {fmt(vmax)}; untinted: silent)")
    return Gallery(title(lat), images, note="; ".join(notes), scale=scale)


def report_galleries(results: dict) -> list[Details]:
    """The report's "Latent pictures": per SAE and pair, a folded group of latent galleries."""
    groups = []
    for g_i, group in enumerate(stored_latents(results)):
        if not group:
            continue
        first = group[0]
        blocks: list = []
        if first.no_map_reason:
            blocks.append(f"No patch heatmaps: {first.no_map_reason}.")
        else:
            grid = first.grid
            blocks.append(f"Each image is shown as the model saw it (its central square), and beside it the latent's "
                          f"activation on each of its {grid['rows']} x {grid['cols']} patches, coloured on one scale "
                          "per latent (patches where it does not fire are left untinted).")
        for l_i, lat in enumerate(report_selection(group)):
            blocks.append(latent_gallery(lat, f"thumb-{g_i}-{l_i}"))
        groups.append(Details(f"{first.sae_label}: top images of shifted latents, {first.id_name} (ID, first) vs "
                              f"{first.ood_name} (OOD, after)", blocks))
    return groups


__all__ = ["REPORT_SHIFTED", "StoredLatent", "latent_gallery", "report_galleries", "report_selection",
           "stored_latents", "title"]

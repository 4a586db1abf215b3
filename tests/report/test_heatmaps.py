"""Patch heatmaps: decoding against hand-computed values, overlay pixels against matplotlib's own colour
map, galleries from a real audit, and damaged or missing pictures rendered from the JSON alone."""

from __future__ import annotations

import base64
import copy
import io

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image

from sae_audit.report import heatmaps, render_reports
from sae_audit.report.galleries import latent_gallery, report_galleries, stored_latents
from sae_audit.results.document import load_results
from tests.report.htmlcheck import Page
from tests.report.test_render import check_structure, markdown_to_html


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_decode_gives_activations_by_hand():
    # CLS then a 2 x 2 grid; activation 2.0 is the image's maximum (255).
    pic = {"activation": 2.0, "patch_map": b64(bytes([51, 0, 255, 102, 0]))}
    m = heatmaps.decode(pic, {"rows": 2, "cols": 2, "n_prefix": 1})
    np.testing.assert_allclose(m.prefix, [0.4])
    np.testing.assert_allclose(m.grid, [[0.0, 2.0], [0.8, 0.0]])
    assert m.peak() == (0, 1, 2.0)


@pytest.mark.parametrize("pic,grid", [
    ({"activation": 1.0, "patch_map": b64(bytes(5))}, {"rows": 2, "cols": 2, "n_prefix": 0}),  # too long
    ({"activation": 1.0, "patch_map": "not base64!"}, {"rows": 2, "cols": 2}),
    ({"activation": -1.0, "patch_map": b64(bytes(4))}, {"rows": 2, "cols": 2}),
    ({"activation": "big", "patch_map": b64(bytes(4))}, {"rows": 2, "cols": 2}),
    ({"activation": 1.0, "patch_map": b64(bytes(4))}, None),
    ({"activation": 1.0, "patch_map": b64(bytes(4))}, {"rows": "x", "cols": 2}),
    ({"activation": 1.0}, {"rows": 2, "cols": 2}),
])
def test_a_map_that_does_not_fit_is_refused_not_guessed(pic, grid):
    assert heatmaps.decode(pic, grid) is None


def test_overlay_pixels_match_matplotlib_viridis_and_leave_silent_patches_untinted():
    grey_level = 100
    thumb = png_bytes(np.full((8, 8, 3), grey_level, dtype=np.uint8))
    m = heatmaps.PatchMap(np.array([[0.0, 1.0], [0.5, 0.0]]), np.zeros(0))
    out = np.asarray(Image.open(io.BytesIO(heatmaps.overlay_png(thumb, m, vmax=1.0, px=16))).convert("RGB"),
                     dtype=float)
    ref = colormaps["viridis"]
    a = heatmaps.ALPHA
    top_right = (1 - a) * grey_level + a * np.array(ref(1.0)[:3]) * 255
    bottom_left = (1 - a) * grey_level + a * np.array(ref(128 / 255)[:3]) * 255
    np.testing.assert_allclose(out[2, 12], top_right, atol=1.5)
    np.testing.assert_allclose(out[12, 2], bottom_left, atol=1.5)
    np.testing.assert_allclose(out[2, 2], [grey_level] * 3, atol=1.5)  # silent: the image only
    np.testing.assert_allclose(out[12, 12], [grey_level] * 3, atol=1.5)
    # patches are blocks (nearest neighbour): a whole quadrant has one colour
    assert np.ptp(out[8:, :8], axis=(0, 1)).max() <= 1


def test_thumbnail_bytes_refuse_what_is_not_a_png():
    assert heatmaps.thumb_bytes({"png": b64(b"GIF89a....")}) is None
    assert heatmaps.thumb_bytes({"png": "%%%"}) is None
    assert heatmaps.thumb_bytes({"png": None}) is None
    good = png_bytes(np.zeros((4, 4, 3), dtype=np.uint8))
    assert heatmaps.thumb_bytes({"png": b64(good)}) == good


def test_the_audit_keeps_maps_for_patch_and_all_tokens_and_says_why_not_for_cls(pictures_dir):
    results = load_results(pictures_dir / "results.json")
    grids = {s["label"].split(" ")[0]: [p.get("patch_grid") for p in s["suites"]["pictures"]["pairs"]]
             for s in results["saes"]}
    assert grids["sae-all"] == [{"rows": 4, "cols": 4, "n_prefix": 1}]  # 32 px / 8 px patches, CLS first
    assert [g for k, g in grids.items() if k.startswith("sae-<")] == [[{"rows": 4, "cols": 4, "n_prefix": 0}]]
    assert grids["sae-cls"] == [None]
    cls_pair = next(s for s in results["saes"] if s["label"].startswith("sae-cls"))["suites"]["pictures"]["pairs"][0]
    assert "no spatial map" in cls_pair["no_map_reason"]
    for group in stored_latents(results):
        for lat in group:
            for pic in lat.pics["id"] + lat.pics["ood"]:
                if lat.grid is None:
                    assert "patch_map" not in pic
                else:  # every stored map decodes, and its strongest token is the image's activation
                    m = heatmaps.decode(pic, lat.grid)
                    assert m is not None
                    top = max(m.grid.max(), m.prefix.max() if len(m.prefix) else 0)
                    assert top == pytest.approx(pic["activation"], rel=1e-6)


def test_report_shows_each_top_image_with_its_heatmap_and_a_scale(pictures_dir):
    results = load_results(pictures_dir / "results.json")
    out = render_reports(results)
    page = check_structure(out["report.html"])
    overlays = [a for a in page.find("img") if a.get("alt", "").startswith("Heatmap of latent")]
    n_maps = sum(1 for g in stored_latents(results) for lat in g if lat.grid for p in lat.pics["id"] + lat.pics["ood"]
                 if "patch_map" in p)
    assert overlays and len(overlays) <= n_maps
    assert "colour scale from 0 to" in " ".join(a.get("alt", "") for a in page.find("img"))
    assert "no spatial map exists" in page.all_text
    # Markdown: the overlay is a file beside the thumbnail, and the colour scale exists once
    md_page = Page(markdown_to_html(out["report.md"]))
    srcs = [a["src"] for a in md_page.find("img")]
    maps = [s for s in srcs if s.endswith("-map.png")]
    assert maps and all(s in out for s in srcs)
    assert "figures/colour-scale.png" in out
    assert len(maps) == len(overlays)


def test_unreadable_or_damaged_pictures_render_from_the_json_alone(pictures_dir):
    """An image that could not be read at audit time (png None), a thumbnail that is not a PNG and a map
    that does not fit: the report still renders, says what is missing, and reads no file."""
    results = load_results(pictures_dir / "results.json")
    damaged = copy.deepcopy(results)
    patch_entry = damaged["saes"][0]["suites"]["pictures"]["pairs"][0]
    lat = next(lat for lat in patch_entry["latents"] if len(lat["id"]) >= 3)
    lat["id"][0]["png"] = None  # could not be read again at audit time
    lat["id"][1]["png"] = b64(b"not a png at all")
    lat["id"][2]["patch_map"] = b64(b"\x00\x01")
    for d in damaged["datasets"]:
        d["source"] = "/nonexistent"  # nothing may be re-read
    out = render_reports(damaged)
    page = check_structure(out["report.html"])
    text = page.all_text
    assert "image unreadable" in text or "could not be read" in text
    alts = [a.get("alt", "") for a in page.find("img")]
    assert any("(the image itself could not be read)" in a for a in alts)
    g = latent_gallery(next(x for grp in stored_latents(damaged) for x in grp if x.latent == lat["latent"]), "t")
    assert len(g.images) >= 2 and g.scale is not None


def test_galleries_from_results_without_maps_say_so(pictures_dir):
    """Results written before maps were kept (no patch_grid) render with a note and plain thumbnails."""
    results = load_results(pictures_dir / "results.json")
    for s in results["saes"]:
        for p in s["suites"]["pictures"]["pairs"]:
            p.pop("patch_grid", None)
            p.pop("no_map_reason", None)
            for lat in p["latents"]:
                for pic in lat["id"] + lat["ood"]:
                    pic.pop("patch_map", None)
    groups = report_galleries(results)
    assert groups and all("records no per-patch values" in g.blocks[0] for g in groups)
    assert all(im.overlay is None for g in groups for gal in g.blocks[1:] for im in gal.images)

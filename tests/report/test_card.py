"""Model cards: the marked section, model-index through huggingface_hub, and pushing without a network."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import yaml
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, constants

from sae_audit.card import BEGIN, END, update_card, update_card_text
from sae_audit.cli import main
from sae_audit.errors import SaeAuditError
from tests.report.conftest import EVIL_SAE

OTHER = EvalResult(task_type="image-classification", dataset_type="imagenet-1k", dataset_name="ImageNet",
                   dataset_split="validation", metric_type="accuracy", metric_value=0.81)


def existing_card() -> str:
    data = ModelCardData(license="mit", tags=["vision"], model_name="my-model", eval_results=[OTHER])
    return f"---\n{data.to_yaml()}\n---\n# My model\n\nSome text the author wrote.\n"


def expected_metrics(results: dict) -> set[tuple]:
    """The eval results the card must hold, read straight from the results document."""
    want = set()
    for s in results["saes"]:
        for d in results["datasets"]:
            for key in ("fvu", "alive_fraction"):
                v = s["datasets"][d["name"]][key]
                if v is not None:
                    want.add((d["name"], f"sae-audit/{key}", s["label"], round(v, 12)))
        for p in s["pairs"]:
            for key in ("fvu_gap", "shared_alive", "js_divergence"):
                if p[key] is not None:
                    want.add((p["ood"], f"sae-audit/{key}", s["label"], round(p[key], 12)))
    return want


def walk(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from walk(v)
    else:
        yield obj


def test_card_section_and_model_index_round_trip(results, tmp_path):
    path = tmp_path / "README.md"
    path.write_text(existing_card())
    update_card(results, path, "audit/report.md")
    first = path.read_text()
    update_card(results, path, "audit/report.md")
    assert path.read_text() == first  # idempotent
    assert first.count(BEGIN) == 1 and first.count(END) == 1
    assert "Some text the author wrote." in first and "# My model" in first

    card = ModelCard.load(path)
    assert card.data.license == "mit" and card.data.tags == ["vision"]
    ours = [r for r in card.data.eval_results if r.source_name == "sae-audit"]
    assert [r for r in card.data.eval_results if r.source_name is None] == [OTHER]
    got = {(r.dataset_name, r.metric_type, r.metric_config.split("; ")[0], round(r.metric_value, 12)) for r in ours}
    assert got == expected_metrics(results)
    for r in ours:
        assert r.source_url == "audit/report.md" and r.task_type and r.dataset_split and r.dataset_type
    front = yaml.safe_load(first.split("---\n")[1])
    assert None not in list(walk(front["model-index"]))
    # The section body parses as Markdown without raw HTML leaking from names.
    assert "&lt;script" in first or r"\<script\>" in first
    assert EVIL_SAE not in first.split(BEGIN)[1]


def test_card_is_created_in_a_folder_and_section_replaced_when_results_change(results, tmp_path):
    update_card(results, tmp_path, "r.md")
    card = tmp_path / "README.md"
    assert ModelCard.load(card).data.model_name == "model"
    results["saes"][0]["pairs"][0]["fvu_gap"] = 0.123456
    update_card(results, tmp_path, "r.md")
    text = card.read_text()
    assert text.count(BEGIN) == 1 and "0.123" in text
    vals = [r.metric_value for r in ModelCard.load(card).data.eval_results if r.metric_type == "sae-audit/fvu_gap"]
    assert 0.123456 in vals


@pytest.mark.parametrize("text, fragment", [
    ("---\nlicense: [mit\ntags: x\n---\n# card\n", "malformed YAML front matter at line 3, column 5"),
    ("---\nlicense: mit\n  bad: : indent\n---\n", "malformed YAML front matter at line 3"),
    ("---\nlicense: mit\n# never closed\n", "never closed"),
    ("---\n- a\n- b\n---\n", "not a mapping"),
    (f"# card\n{END}\n{BEGIN}\n", "out of order"),
])
def test_malformed_cards_are_refused_and_left_untouched(results, tmp_path, text, fragment):
    path = tmp_path / "README.md"
    path.write_text(text)
    with pytest.raises(SaeAuditError, match=fragment):
        update_card(results, path, "r.md")
    assert path.read_text() == text


def test_cli_card_writes_locally_and_reports_bad_front_matter(audit_dir, tmp_path, capsys):
    card = tmp_path / "README.md"
    assert main(["card", "--results", str(audit_dir / "results.json"), "--card", str(card)]) == 0
    meta = ModelCard.load(card).data
    assert meta.eval_results[0].source_url.endswith("report.md")
    card.write_text("---\nlicense: [\n---\n")
    assert main(["card", "--results", str(audit_dir / "results.json"), "--card", str(card)]) == 2
    err = capsys.readouterr().err
    assert "malformed YAML front matter at line" in err and "Traceback" not in err


@pytest.fixture()
def no_network(monkeypatch):
    """Any call that would reach the hub fails the test."""
    def boom(*a, **k):
        raise AssertionError("network call attempted")
    monkeypatch.setattr(HfApi, "model_info", boom)
    monkeypatch.setattr(HfApi, "create_commit", boom)


def test_push_without_a_token_says_so_and_sends_nothing(audit_dir, tmp_path, monkeypatch, capsys, no_network):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    card = tmp_path / "README.md"
    code = main(["card", "--results", str(audit_dir / "results.json"), "--card", str(card), "--push", "me/model"])
    err = capsys.readouterr().err
    assert code == 2 and "no Hugging Face token" in err and "nothing was uploaded" in err
    assert not card.exists()  # refused before writing anything


def test_push_offline_is_refused(audit_dir, tmp_path, monkeypatch, capsys, no_network):
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code = main(["card", "--results", str(audit_dir / "results.json"), "--card", str(tmp_path), "--push", "me/m"])
    assert code == 2 and "HF_HUB_OFFLINE" in capsys.readouterr().err


def test_push_opens_a_pr_pinned_to_the_parent_commit(audit_dir, tmp_path, monkeypatch):
    """Everything up to the network call is real; the two hub calls are recorded instead of sent."""
    calls = {}
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert main(["report", "render", str(audit_dir / "results.json"), "--out", str(audit_dir), "--overwrite"]) == 0

    def model_info(self, repo_id, revision=None, **kw):
        calls["info"] = (repo_id, revision, self.token)
        return SimpleNamespace(sha="a" * 40)

    def create_commit(self, repo_id, operations, **kw):
        calls["commit"] = (repo_id, [op.path_in_repo for op in operations], kw)
        return SimpleNamespace(pr_url="https://huggingface.co/me/m/discussions/1")

    monkeypatch.setattr(HfApi, "model_info", model_info)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    assert main(["card", "--results", str(audit_dir / "results.json"), "--card", str(tmp_path), "--push", "me/m"]) == 0
    assert calls["info"] == ("me/m", None, "hf_fake")
    repo, paths, kw = calls["commit"]
    assert repo == "me/m" and kw["create_pr"] is True and kw["parent_commit"] == "a" * 40
    assert paths[0] == "README.md" and {"sae-audit/results.json", "sae-audit/report.md", "sae-audit/report.html"} \
        <= set(paths) and any(p.startswith("sae-audit/figures/") for p in paths)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.eval_results[0].source_url == "https://huggingface.co/me/m/blob/main/sae-audit/report.md"
    assert "(sae-audit/report.md)" in card.text


def test_bad_repo_id(audit_dir, tmp_path, monkeypatch, capsys, no_network):
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert main(["card", "--results", str(audit_dir / "results.json"), "--card", str(tmp_path),
                 "--push", "not a repo"]) == 2
    assert "not a hub repository id" in capsys.readouterr().err


def test_a_missing_card_folder_is_refused(results, tmp_path):
    with pytest.raises(SaeAuditError, match="does not exist"):
        update_card(results, str(tmp_path / "no-such-folder") + "/", "r.md")
    with pytest.raises(SaeAuditError, match="does not exist"):
        update_card(results, tmp_path / "no-such-folder" / "README.md", "r.md")

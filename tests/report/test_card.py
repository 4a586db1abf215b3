"""Model cards: the marked section, model-index through huggingface_hub, and pushing without a network."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import yaml
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, constants

from sae_audit.card import BEGIN, END, update_card, update_card_text
from sae_audit.cli import main
from sae_audit.errors import SaeAuditError
from tests.isolated import run_isolated
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
    assert paths[0] == "README.md" and {"sae-audit/results.json", "sae-audit/report.md", "sae-audit/report.html",
                                        "sae-audit/latents.html"} <= set(paths)
    assert any(p.startswith("sae-audit/figures/") for p in paths)
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


# --------------------------------------------------------------------------- hostile cards (issue 10)
def test_markers_inside_code_fences_are_text_not_the_section(results, tmp_path):
    shown = (f"# Card\n\nHow the section looks:\n\n```markdown\n{BEGIN}\nUSER TEXT IN BACKTICKS\n{END}\n```\n\n"
             f"~~~~\n{BEGIN}\n```\nstill inside the tilde fence\n{END}\n~~~~\n\nThe end.\n")
    path = tmp_path / "README.md"
    path.write_text(shown)
    update_card(results, path, "r.md")
    text = path.read_text()
    assert "USER TEXT IN BACKTICKS" in text and "still inside the tilde fence" in text and "The end." in text
    assert text.count(BEGIN) == 3  # the two shown in fences, and the real section appended after them
    assert text.index("The end.") < text.rindex(BEGIN)
    update_card(results, path, "r.md")  # a second run replaces the real section only
    assert path.read_text() == text
    # an unclosed fence runs to the end of the document: markers after it are text as well
    path.write_text(f"# Card\n\n````\n{BEGIN}\nkeep me\n{END}\n```\n")
    update_card(results, path, "r.md")
    assert "keep me" in path.read_text() and path.read_text().count(BEGIN) == 2


def test_the_card_keeps_its_mode_and_a_read_only_card_is_refused(results, tmp_path):
    path = tmp_path / "README.md"
    path.write_text(existing_card())
    path.chmod(0o600)
    update_card(results, path, "r.md")
    assert path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o640)
    update_card(results, path, "r.md")
    assert path.stat().st_mode & 0o777 == 0o640
    ro = tmp_path / "ro.md"
    ro.write_text(existing_card())
    ro.chmod(0o444)
    with pytest.raises(SaeAuditError, match=r"read-only \(mode 0444\); make it writable"):
        update_card(results, ro, "r.md")
    assert ro.read_text() == existing_card() and ro.stat().st_mode & 0o777 == 0o444


def test_a_byte_order_mark_is_read_and_kept(results, tmp_path):
    path = tmp_path / "README.md"
    path.write_bytes(b"\xef\xbb\xbf" + existing_card().encode())
    update_card(results, path, "r.md")
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf---\n") and raw.count(b"\n---\n") == 1  # one front matter, BOM kept
    card = ModelCard(raw.decode("utf-8-sig"))
    assert card.data.license == "mit" and "license:" not in card.text
    update_card(results, path, "r.md")
    assert path.read_bytes() == raw


def test_special_files_and_links_are_never_replaced(results, tmp_path):
    # Special files are reached through links in tmp_path, so that even a regression replaces only the link,
    # never /dev/null or /dev/stdout themselves.
    os.mkfifo(tmp_path / "pipe.md")
    os.symlink("/dev/stdout", tmp_path / "stdout.md")  # the child's stdout is a pipe
    os.symlink("/dev/null", tmp_path / "null.md")
    (tmp_path / "results.json").write_text(json.dumps(results))
    out = run_isolated(f"""
        results = json.loads(open({str(tmp_path / "results.json")!r}).read())
        msgs = []
        for name in ("pipe.md", "stdout.md", "null.md"):
            try:
                update_card(results, {str(tmp_path)!r} + "/" + name, "r.md")
                msgs.append("written")
            except SaeAuditError as exc:
                msgs.append(str(exc))
        report(msgs=msgs)
    """, imports="import json\nfrom sae_audit.card import update_card\nfrom sae_audit.errors import SaeAuditError",
        timeout=60)
    pipe, stdout, null = out["msgs"]
    assert "pipe.md is a FIFO (named pipe), not a regular file" in pipe
    assert "stdout.md is a FIFO (named pipe), not a regular file" in stdout
    assert "null.md is a character device, not a regular file" in null
    assert (tmp_path / "stdout.md").is_symlink() and (tmp_path / "null.md").is_symlink()
    # a link to a regular file: written through, the link stays a link
    real = tmp_path / "real.md"
    real.write_text(existing_card())
    os.symlink(real, tmp_path / "link.md")
    assert update_card(results, tmp_path / "link.md", "r.md") == real
    assert (tmp_path / "link.md").is_symlink() and BEGIN in real.read_text()
    os.symlink(tmp_path / "gone.md", tmp_path / "dangling.md")
    with pytest.raises(SaeAuditError, match="symbolic link that cannot be followed"):
        update_card(results, tmp_path / "dangling.md", "r.md")
    assert (tmp_path / "dangling.md").is_symlink() and not (tmp_path / "gone.md").exists()
    # a link into /proc: /proc/self/status is read-only (0444), so it is refused and the link kept
    os.symlink("/proc/self/status", tmp_path / "proc.md")
    with pytest.raises(SaeAuditError, match=r"proc.md is read-only \(mode 0444\)"):
        update_card(results, tmp_path / "proc.md", "r.md")
    assert (tmp_path / "proc.md").is_symlink()
    # a writable file in /proc: it is read, but no file can be created beside it, so nothing is written
    os.symlink("/proc/self/comm", tmp_path / "proc2.md")  # mode 0644
    with pytest.raises(SaeAuditError, match="cannot write model card .*proc2.md"):
        update_card(results, tmp_path / "proc2.md", "r.md")
    assert (tmp_path / "proc2.md").is_symlink()


def test_the_results_file_is_never_turned_into_a_card(audit_dir, results, tmp_path, capsys):
    copy = tmp_path / "results.json"
    copy.write_bytes((audit_dir / "results.json").read_bytes())
    before = copy.read_bytes()
    with pytest.raises(SaeAuditError, match="is the results file being read"):
        update_card(results, copy, "r.md", results_path=copy)
    assert main(["card", "--results", str(copy), "--card", str(copy)]) == 2
    err = capsys.readouterr().err
    assert "is the results file being read" in err and "Traceback" not in err
    other = tmp_path / "other.json"  # another results file as the card: the content gives it away
    other.write_bytes(before)
    assert main(["card", "--results", str(copy), "--card", str(other)]) == 2
    err = capsys.readouterr().err
    assert "holds a sae-audit results document, not a model card" in err and "Traceback" not in err
    assert copy.read_bytes() == before


def test_front_matter_nested_too_deeply(results, tmp_path):
    path = tmp_path / "README.md"
    text = "---\nlicense: mit\ntags: " + "[" * 50_000 + "]" * 50_000 + "\n---\n# Card\n"
    path.write_text(text)
    with pytest.raises(SaeAuditError, match="front matter .* is nested too deeply"):
        update_card(results, path, "r.md")
    assert path.read_text() == text

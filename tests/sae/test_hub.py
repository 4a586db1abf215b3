"""save_pretrained, push_to_hub and hub loading with pinned revisions, against a local HF cache layout.

Nothing here reaches the network: uploads go to a stand-in for ``HfApi`` that
records the calls and commits what it receives into a local Hugging Face cache
(``models--org--name/{refs,snapshots}``), which huggingface_hub's own
``snapshot_download`` then reads with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sae_audit.errors import SaeAuditError
from sae_audit.sae import SAEConfig, TopKSAE, load_sae

REPO = Path(__file__).resolve().parents[2]


class LocalHub:
    """Stands in for ``huggingface_hub.HfApi``: records calls, commits into a local cache layout."""

    def __init__(self, cache: Path):
        self.cache = cache
        self.calls: list[tuple[str, dict]] = []

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kw}))

    def upload_folder(self, *, repo_id, folder_path, path_in_repo=None, revision=None, create_pr=False, **kw):
        self.calls.append(("upload_folder", {"repo_id": repo_id, "path_in_repo": path_in_repo, "revision": revision,
                                             "create_pr": create_pr, "files": sorted(os.listdir(folder_path)), **kw}))
        root = self.cache / ("models--" + repo_id.replace("/", "--"))
        ref = "pr/1" if create_pr else (revision or "main")
        parent = root / "refs" / (revision or "main")
        digest = hashlib.sha1(repr(self.calls).encode()).hexdigest()
        snap = root / "snapshots" / digest
        if parent.is_file():  # a commit keeps the parent's files
            shutil.copytree(root / "snapshots" / parent.read_text(), snap)
        target = snap / path_in_repo if path_in_repo else snap
        shutil.copytree(folder_path, target, dirs_exist_ok=True)
        (root / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (root / "refs" / ref).write_text(digest)
        return {"oid": digest, "pr": create_pr}


@pytest.fixture()
def offline_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    return cache


def make(seed=0, k=4, **kw) -> TopKSAE:
    sae = TopKSAE(SAEConfig(d_in=8, d_sae=24, k=k, model="facebook/dinov2-small", hook_point="block.8",
                            tokens="patch", lambda_ratio=0.01, **kw), seed=seed)
    with torch.no_grad():
        sae.b_enc.uniform_(-0.1, 0.1, generator=torch.Generator().manual_seed(seed))
    return sae


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_save_pretrained_writes_loadable_folder_and_card(tmp_path):
    sae = make()
    out = sae.save_pretrained(tmp_path / "s", metrics={"heldout_fvu": 0.25})
    meta = front_matter((out / "README.md").read_text())
    assert meta["library_name"] == "sae-audit" and meta["base_model"] == "facebook/dinov2-small"
    assert meta["sae_config"] == json.loads((out / "config.json").read_text())
    assert meta["metrics"] == {"heldout_fvu": 0.25}
    again = load_sae(out)
    x = torch.randn(5, 8)
    torch.testing.assert_close(again(x), sae(x))


def test_push_then_pull_round_trip_with_pinned_revisions(offline_cache):
    hub = LocalHub(offline_cache)
    first, second = make(seed=1), make(seed=2, k=6)
    info1 = first.push_to_hub("me/saes", subfolder="block8/k4", api=hub, metrics={"heldout_fvu": 0.3})
    info2 = second.push_to_hub("me/saes", subfolder="block8/k4", api=hub)
    assert [c[0] for c in hub.calls] == ["create_repo", "upload_folder", "create_repo", "upload_folder"]
    up = hub.calls[1][1]
    assert up["path_in_repo"] == "block8/k4" and up["create_pr"] is False
    assert up["files"] == ["README.md", "config.json", "model.safetensors"]
    x = torch.randn(7, 8)
    latest = load_sae("me/saes/block8/k4")  # main now points at the second commit
    torch.testing.assert_close(latest(x), second(x))
    pinned = load_sae("me/saes/block8/k4", revision=info1["oid"])
    torch.testing.assert_close(pinned(x), first(x))
    assert load_sae(f"me/saes/block8/k4@{info1['oid']}").k == 4
    with pytest.raises(SaeAuditError, match="not in the local Hugging Face cache"):
        load_sae("me/saes/block8/k4", revision="0" * 40)
    with pytest.raises(SaeAuditError, match="has no folder"):
        load_sae("me/saes/block9")
    with pytest.raises(SaeAuditError, match="not in the local Hugging Face cache"):
        load_sae("someone/else")


def test_push_as_pull_request_and_bad_repo_ids(offline_cache):
    hub = LocalHub(offline_cache)
    sae = make()
    sae.push_to_hub("me/saes", api=hub)
    info = sae.push_to_hub("me/saes", subfolder="variant", create_pr=True, api=hub)
    assert hub.calls[-1][1]["create_pr"] is True and info["pr"]
    with pytest.raises(SaeAuditError, match="must look like 'org/name'"):
        sae.push_to_hub("not a repo", api=hub)
    with pytest.raises(SaeAuditError, match="relative path"):
        sae.push_to_hub("me/saes", subfolder="../up", api=hub)


def test_cli_reads_hub_spec_offline_in_a_subprocess(offline_cache, tiny_model_dir, tiny_image_folder, tmp_path):
    """The whole CLI, as a user runs it, with HF_HUB_OFFLINE=1 and a warm local cache."""
    from sae_audit.testing import make_image_folder, make_tiny_sae_dir

    ood = make_image_folder(tmp_path / "ood", n_per_class=2, classes=("x", "y"), seed=3)

    sae = load_sae(make_tiny_sae_dir(tmp_path / "tiny"))
    info = sae.push_to_hub("me/tiny", subfolder="b2", api=LocalHub(offline_cache))
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(offline_cache))
    out = tmp_path / "audit"
    proc = subprocess.run(
        [sys.executable, "-m", "sae_audit.cli", "run", str(tiny_model_dir), "--sae", f"me/tiny/b2@{info['oid']}",
         "--id", str(tiny_image_folder), "--ood", str(ood), "--out", str(out), "--device", "cpu", "-q"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "results.json").is_file()

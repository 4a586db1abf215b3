"""``sae-audit run`` under torchrun (2 CPU processes, gloo) equals the one-process audit."""

from __future__ import annotations

import json

import pytest

from sae_audit.testing import make_image_folder, make_tiny_model_dir, make_tiny_sae_dir
from tests.distributed.helpers import differences, free_port, one_process, torchrun

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist-run")
    model = make_tiny_model_dir(root / "model")
    sae = make_tiny_sae_dir(root / "sae", hook_point="block.2")
    ids = make_image_folder(root / "id", n_per_class=9, seed=1)  # 27 images: a noise floor (>= 20)
    ood = make_image_folder(root / "ood", n_per_class=3, classes=("circle", "noise"), seed=2)
    return root, model, sae, ids, ood


def audit_args(setup, out, *extra):
    root, model, sae, ids, ood = setup
    return ["run", model, "--sae", sae, "--id", ids, "--ood", ood, "--out", out, "--device", "cpu",
            "--batch-size", "4", "--bootstrap", "50", "--suite", "all", *extra]


@pytest.fixture(scope="module")
def single(setup) -> dict:
    """The one-process audit every distributed one is compared with."""
    root = setup[0]
    done = one_process(audit_args(setup, root / "one", "-q"))
    assert done.returncode == 0, done.stderr
    return json.loads((root / "one" / "results.json").read_text())


def test_two_processes_equal_one(setup, single):
    root = setup[0]
    dist = torchrun(audit_args(setup, root / "two"))
    assert dist.returncode == 0, dist.stdout + dist.stderr
    a = single
    b = json.loads((root / "two" / "results.json").read_text())
    assert b["provenance"]["world_size"] == 2 and b["provenance"]["backend"] == "gloo"
    assert a["provenance"]["world_size"] == 1 and a["provenance"]["backend"] is None
    # the ID set streamed as two shares still has its two seeded halves and its floor
    assert b["saes"][0]["noise_floor"]["n_images"] == a["saes"][0]["noise_floor"]["n_images"]
    assert "intervals" in b["saes"][0]["pairs"][0]
    assert differences(a, b) == []
    # one progress bar per image set, from rank 0 only
    assert dist.stderr.count("id:") <= 2 * a["datasets"][0]["n_images"]


def test_more_ranks_than_images_of_a_set(setup, tmp_path):
    """A rank whose share of a set is empty still takes part (3 ranks, an OOD set of 2 images split 0/1/1,
    the ID set 9/9/9): the results still equal one process's."""
    root, model, sae, ids, _ = setup
    tiny = make_image_folder(tmp_path / "tiny", n_per_class=1, classes=("circle", "noise"), seed=3)  # 2 images
    args = ["run", model, "--sae", sae, "--id", ids, "--ood", tiny, "--device", "cpu", "--batch-size", "4",
            "--bootstrap", "20"]
    single = one_process([*args, "--out", tmp_path / "one", "-q"])
    assert single.returncode == 0, single.stderr
    dist = torchrun([*args, "--out", tmp_path / "three"], nproc=3)
    assert dist.returncode == 0, dist.stdout + dist.stderr
    a = json.loads((tmp_path / "one" / "results.json").read_text())
    b = json.loads((tmp_path / "three" / "results.json").read_text())
    assert differences(a, b) == []


def test_a_user_error_on_every_rank_ends_the_job_with_one_message(setup, tmp_path):
    root, model, sae, ids, ood = setup
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("not an audit folder")
    dist = torchrun(audit_args(setup, tmp_path / "out"), timeout=900)
    assert dist.returncode != 0
    assert dist.stderr.count("sae-audit: error:") == 1, dist.stderr
    assert (tmp_path / "out" / "mine.txt").read_text() == "not an audit folder"


def test_two_nodes_on_loopback(setup, single, tmp_path):
    """Two torchrun invocations (``--nnodes 2``), one process each, meeting at 127.0.0.1."""
    import subprocess
    import sys

    from tests.distributed.helpers import REPO, env

    root = setup[0]
    port = free_port()
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
               "--nproc_per_node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
               "-m", "sae_audit.cli", *map(str, audit_args(setup, tmp_path / "two"))]
        procs.append(subprocess.Popen(cmd, env=env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    b = json.loads((tmp_path / "two" / "results.json").read_text())
    assert b["provenance"]["world_size"] == 2
    assert differences(single, b) == []
    assert root.exists()


def test_an_error_on_rank_1_alone_stops_every_rank_with_one_message(setup, tmp_path):
    """Under --strict an unreadable image in rank 1's share fails rank 1 only; rank 0 learns it at the end of the
    image set, and both exit 2 without a traceback; nothing is written."""
    root, model, sae, ids, ood = setup
    broken = make_image_folder(tmp_path / "broken", n_per_class=5, classes=("circle", "square"), seed=5)
    (broken / "zz-last").mkdir()
    (broken / "zz-last" / "bad.png").write_bytes(b"not a png")  # the set's last image: rank 1's share
    args = ["run", model, "--sae", sae, "--id", ids, "--ood", broken, "--out", tmp_path / "out", "--device", "cpu",
            "--batch-size", "4", "--strict"]
    dist = torchrun(args, timeout=900)
    assert dist.returncode != 0
    assert dist.stderr.count("sae-audit: error:") == 1, dist.stderr
    assert "(rank 1)" in dist.stderr and "bad.png" in dist.stderr
    assert "Traceback (most recent call last):\n  File \"/" not in dist.stderr.split("ChildFailedError")[0]
    assert not (tmp_path / "out" / "results.json").exists()

"""Careless or hostile input through the real CLI: one clear line and exit 2 (a plugin's bug names the plugin),
never a traceback, never a silent success, never a half-written output."""

from __future__ import annotations

import json
import time

import pytest
import torch

from sae_audit.cli import main
from sae_audit.plugin_manager import ENV_ALLOW
from sae_audit.testing import make_image_folder, make_tiny_sae_dir


@pytest.fixture()
def ood(tmp_path):
    return make_image_folder(tmp_path / "ood", n_per_class=2, classes=("a", "b"), seed=5)


def run_args(model, sae, ids, ood, out, *extra):
    return ["run", str(model), "--sae", str(sae), "--id", str(ids), "--ood", str(ood), "--out", str(out),
            "--device", "cpu", "-q", *extra]


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("sae-audit: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------- plugins that exit
EXITS_AT_IMPORT = "import sys\nsys.exit(0)\n"
INTERRUPTS_AT_IMPORT = "raise KeyboardInterrupt\n"
SECTION_EXITS = '''
import sys
from sae_audit.hookspecs import hookimpl

@hookimpl
def sae_audit_register_report_sections(register):
    register("quitter", lambda results: sys.exit(7))
'''


def test_a_plugin_exiting_at_import_is_left_out_by_name(plugin_site, monkeypatch, capsys):
    plugin_site("exit-plugin", "1.0", {"exit_plugin": EXITS_AT_IMPORT}, {"quits": "exit_plugin"})
    plugin_site("ctrlc-plugin", "1.0", {"ctrlc_plugin": INTERRUPTS_AT_IMPORT}, {"ctrlc": "ctrlc_plugin"})
    monkeypatch.setenv(ENV_ALLOW, "quits,ctrlc")
    assert main(["plugins", "--json"]) == 0  # the command ran: not a silent no-op
    info = json.loads(capsys.readouterr().out)
    failed = {f["name"]: f for f in info["failed"]}
    assert failed["quits"]["stage"] == "import" and failed["quits"]["error"].startswith("SystemExit")
    assert failed["ctrlc"]["error"].startswith("KeyboardInterrupt")


def test_a_section_exiting_becomes_a_note(plugin_site, monkeypatch, tiny_model_dir, tiny_sae_dir, tiny_image_folder,
                                          ood, tmp_path):
    plugin_site("quit-section", "1.0", {"quit_section": SECTION_EXITS}, {"quitter": "quit_section"})
    monkeypatch.setenv(ENV_ALLOW, "quitter")
    assert main(run_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood, tmp_path / "a")) == 0
    md = (tmp_path / "a" / "report.md").read_text()
    assert "failed to render report section 'quitter': SystemExit: 7" in md.replace("\\", "")


# --------------------------------------------------------------------------- plugin suites that misbehave
SUITE = '''
import numpy as np
import torch
from sae_audit.hookspecs import hookimpl

class Acc:
    def __init__(self, mode):
        self.mode, self.n = mode, 0
    def accumulate(self, batch):
        if self.mode == "raise":
            raise ZeroDivisionError("accumulate blew up")
        self.n += 1
    def merge(self, other):
        self.n += other.n
    def finish(self):
        if self.mode == "nan":
            return {"entropy": float("nan")}
        if self.mode == "tensor":
            return {"entropy": torch.tensor(1.0)}
        if self.mode == "numpy":
            return {"stats": {"entropy": np.float32(1.0)}}
        if self.mode == "list":
            return [1.0]
        if self.mode == "finish-raise":
            raise KeyError("no_such_key")
        if self.mode == "stateful":
            self.n += 1  # finish must not change the accumulator
            return {"n": self.n}
        return {"entropy": 1.0}

def compare(a, b, ctx):
    if a.mode == "compare-raise":
        raise ValueError("compare blew up")
    return {"gap": float("inf")}

@hookimpl
def sae_audit_register_suites(register):
    for mode in ("raise", "nan", "tensor", "numpy", "list", "finish-raise", "stateful", "compare-raise",
                 "compare-inf"):
        register(f"bad-{mode}", lambda c, mode=mode: Acc(mode), f"a suite that misbehaves: {mode}",
                 compare=compare if mode.startswith("compare") else None)
'''


@pytest.mark.parametrize("mode, why", [
    ("raise", "failed in the accumulate of suite 'bad-raise' (sae_audit_register_suites): ZeroDivisionError: "
              "accumulate blew up"),
    ("nan", "suite 'bad-nan': finish() returned a value that cannot go into results.json: $.entropy is nan"),
    ("tensor", "$.entropy is a torch.Tensor"),
    ("numpy", "$.stats.entropy is a numpy.float32 (convert it to a plain number"),
    ("list", "suite 'bad-list': finish() returned a value that cannot go into results.json: it is not a dict"),
    ("finish-raise", "failed in the finish of suite 'bad-finish-raise' (sae_audit_register_suites): KeyError"),
    ("stateful", "suite 'bad-stateful': finish() returned something else when called a second time; finish "
                 "must not change the accumulator"),
    ("compare-raise", "failed in the compare of suite 'bad-compare-raise' (sae_audit_register_suites): "
                      "ValueError: compare blew up"),
    ("compare-inf", "suite 'bad-compare-inf': compare() returned a value that cannot go into results.json: "
                    "$.gap is inf"),
])
def test_a_plugin_suite_failure_names_the_plugin_and_stops_early(plugin_site, monkeypatch, capsys, tiny_model_dir,
                                                                  tiny_sae_dir, tiny_image_folder, ood, tmp_path,
                                                                  mode, why):
    plugin_site("bad-suites", "0.1", {"bad_suites": SUITE}, {"badsuites": "bad_suites"})
    monkeypatch.setenv(ENV_ALLOW, "badsuites")
    out = tmp_path / "out"
    assert main(run_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood, out, "--suite", f"bad-{mode}")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "plugin 'badsuites', distribution bad-suites 0.1" in line and why in line
    assert not out.exists()


def test_two_folders_with_one_name_are_refused_with_what_to_do(tiny_model_dir, tiny_sae_dir, tmp_path, capsys):
    a = make_image_folder(tmp_path / "a" / "imgs", n_per_class=2, classes=("x", "y"))
    b = make_image_folder(tmp_path / "b" / "imgs", n_per_class=2, classes=("x", "y"), seed=4)
    assert main(run_args(tiny_model_dir, tiny_sae_dir, a, b, tmp_path / "out")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "image set names must differ, but 'imgs' names more than one set" in line and "rename" in line
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- conditions that can never hold
@pytest.mark.parametrize("cond, why", [("fvu>nan", "finite"), ("fvu_gap[images]>0.1", "qualify it with an OOD set"),
                                       ("fvu[nowhere]>0.1", "no image set 'nowhere'")])
def test_fail_on_conditions_that_can_never_hold_are_refused_first(tiny_model_dir, tiny_sae_dir, tiny_image_folder,
                                                                  ood, tmp_path, capsys, cond, why):
    t0 = time.perf_counter()
    assert main(run_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood, tmp_path / "o", "--fail-on",
                         cond)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--fail-on" in line and why in line
    assert not (tmp_path / "o").exists() and time.perf_counter() - t0 < 30


# --------------------------------------------------------------------------- training that goes wrong
TRAIN = ["--hook", "block.1", "--k", "4", "--max-vectors", "96", "--eval-vectors", "32", "--sae-batch-size", "32",
         "--device", "cpu", "-q"]


def test_a_diverging_run_stops_and_writes_nothing(tmp_path):
    from sae_audit.errors import SaeAuditError
    from sae_audit.sae import SAEConfig
    from sae_audit.train import TrainConfig, fit_saes

    # Unnormalised activations of 1e25: squared errors overflow float32 and the loss turns NaN.
    chunks = [1e25 * torch.randn(200, 8, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    with pytest.raises(SaeAuditError, match=r"training diverged at step 1.*lower `optim.lr`.*nothing was written"):
        fit_saes([SAEConfig(d_in=8, d_sae=16, k=2, normalisation="none")], chunks,
                 TrainConfig(batch_size=64, eval_vectors=64, max_vectors=500), progress=False)


@pytest.mark.parametrize("flag, value", [("--expansion", "nan"), ("--expansion", "inf"), ("--expansion", "1e9"),
                                         ("--lr", "nan"), ("--lr", "1e30"), ("--l1-l2-ratio", "-1")])
def test_absurd_training_settings_are_one_line(tiny_model_dir, tiny_image_folder, tmp_path, capsys, flag, value):
    args = ["train", str(tiny_model_dir), "--data", str(tiny_image_folder), *TRAIN, "--expansion", "2",
            flag, value, "--out", str(tmp_path / "sae")]
    assert main(args) == 2
    assert flag in one_error_line(capsys.readouterr().err)


def test_held_out_split_is_exact_and_a_too_small_set_names_the_setting(tiny_model_dir, tiny_image_folder, tmp_path,
                                                                      capsys):
    from sae_audit.train import TrainConfig, fit_saes
    from sae_audit.sae import SAEConfig

    chunks = [torch.randn(70, 8, generator=torch.Generator().manual_seed(i)) for i in range(3)]  # 210 vectors
    (sae, summary), = fit_saes([SAEConfig(d_in=8, d_sae=16, k=2)], chunks,
                               TrainConfig(batch_size=64, eval_vectors=50, max_vectors=1000), progress=False)
    assert summary.eval_vectors == 50 and summary.vectors == 160  # nothing thrown away
    # 12 images x 16 patches = 192 vectors, all needed for the held-out split
    assert main(["train", str(tiny_model_dir), "--data", str(tiny_image_folder), "--hook", "block.1", "--k", "4",
                 "--expansion", "2", "--eval-vectors", "500", "--device", "cpu", "-q", "--out",
                 str(tmp_path / "s")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--eval-vectors" in line and "--max-images" in line


def test_train_says_when_the_activations_run_out_before_max_vectors(tiny_model_dir, tiny_image_folder, tmp_path,
                                                                     capsys):
    acts = tmp_path / "acts"
    assert main(["cache", str(tiny_model_dir), "--hook", "block.1", "--data", str(tiny_image_folder), "--out",
                 str(acts), "--device", "cpu", "-q"]) == 0
    rows = json.loads((acts / "meta.json").read_text())["rows"]
    assert main(["train", "--cache", str(acts), "--k", "4", "--expansion", "2", "--max-vectors", "100000",
                 "--eval-vectors", "32", "--sae-batch-size", "32", "--device", "cpu", "--out", str(tmp_path / "sae")]) == 0
    err = capsys.readouterr().err
    assert f"ran out after {rows - 32:,} of the 100,000 training vectors asked (--max-vectors)" in err
    assert "--max-images" in err


# --------------------------------------------------------------------------- damaged state files
def test_damaged_checkpoint_cache_and_results_are_one_line(tiny_model_dir, tiny_image_folder, tmp_path, capsys):
    acts = tmp_path / "acts"
    assert main(["cache", str(tiny_model_dir), "--hook", "block.1", "--data", str(tiny_image_folder), "--out",
                 str(acts), "--device", "cpu", "-q"]) == 0
    meta = json.loads((acts / "meta.json").read_text())
    args = ["train", "--cache", str(acts), "--k", "4", "--expansion", "2", "--max-vectors", "64", "--eval-vectors",
            "32", "--sae-batch-size", "32", "--device", "cpu", "-q"]
    out = tmp_path / "sae"
    (out / ".checkpoint").mkdir(parents=True)
    torch.save({"schema_version": 1, "step": 3}, out / ".checkpoint" / "state.pt")  # keys missing
    assert main([*args, "--out", str(out), "--resume"]) == 2
    assert "not a complete sae-audit checkpoint" in one_error_line(capsys.readouterr().err)

    (acts / "meta.json").write_text(json.dumps({**meta, "schema_version": "one"}))
    assert main([*args, "--out", str(tmp_path / "s2")]) == 2
    assert "schema_version must be an integer" in one_error_line(capsys.readouterr().err)

    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    assert main(["report", "render", str(deep), "--out", str(tmp_path / "r")]) == 2
    assert "nested too deeply" in one_error_line(capsys.readouterr().err)


def test_render_refuses_duplicate_sets_and_fractions_out_of_range(tmp_path, capsys):
    from pathlib import Path

    demo = json.loads((Path(__file__).resolve().parents[1] / "reports/demo/results.json").read_text())
    twice = dict(demo, datasets=demo["datasets"] + [demo["datasets"][1]])
    (tmp_path / "twice.json").write_text(json.dumps(twice))
    assert main(["report", "render", str(tmp_path / "twice.json"), "--out", str(tmp_path / "a")]) == 2
    assert "more than once" in one_error_line(capsys.readouterr().err)
    demo["saes"][0]["pairs"][0]["shared_alive"] = 1.5
    (tmp_path / "frac.json").write_text(json.dumps(demo))
    assert main(["report", "render", str(tmp_path / "frac.json"), "--out", str(tmp_path / "b")]) == 2
    assert "shared_alive" in one_error_line(capsys.readouterr().err)


# --------------------------------------------------------------------------- resolution and the hub
def test_an_image_size_other_than_the_sae_s_is_warned_and_reported(tiny_model_dir, tiny_image_folder, ood, tmp_path,
                                                                   capsys):
    sae = make_tiny_sae_dir(tmp_path / "sae32", image_size=32)
    out = tmp_path / "o"
    assert main(["run", str(tiny_model_dir), "--sae", str(sae), "--id", str(tiny_image_folder), "--ood", str(ood),
                 "--out", str(out), "--device", "cpu", "--image-size", "48"]) == 0
    err = capsys.readouterr().err
    assert "--image-size 48 differs from the resolution the SAEs were trained at (32 px)" in err
    md = (out / "report.md").read_text()
    assert "Audited at 48 px, but" in md and "was trained at 32 px" in md
    # -q: errors and --fail-on outcomes only; the mismatch is still in the report
    assert main(["run", str(tiny_model_dir), "--sae", str(sae), "--id", str(tiny_image_folder), "--ood", str(ood),
                 "--out", str(out), "--device", "cpu", "--image-size", "48", "--overwrite", "-q"]) == 0
    assert capsys.readouterr().err == ""
    assert "Audited at 48 px, but" in (out / "report.md").read_text()


def test_pushing_to_an_unreachable_hub_is_one_line(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    import huggingface_hub.constants as c

    results = Path(__file__).resolve().parents[1] / "reports/demo/results.json"
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 34)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(c, "ENDPOINT", "http://127.0.0.1:9")
    assert main(["card", "--results", str(results), "--card", str(tmp_path / "README.md"), "--push", "me/x"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "could not reach the Hugging Face hub" in line or "refused" in line
    assert main(["card", "--results", str(results), "--card", str(tmp_path / "R2.md"), "--push", "not a repo"]) == 2
    assert "--push 'not a repo' is not a hub repository id" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "R2.md").exists()  # refused before anything was written

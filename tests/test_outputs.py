"""Output folders never lose a user's data: real files, real processes, real SIGKILLs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sae_audit.cli import main
from sae_audit.errors import SaeAuditError
from sae_audit.outputs import MANIFEST, OutputFolder, atomic_write_text, check_out_dir
from sae_audit.testing import make_image_folder

ROOT = Path(__file__).resolve().parents[1]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write(folder: OutputFolder, files: dict[str, str]) -> list[Path]:
    stage = folder.stage()
    for rel, text in files.items():
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        (stage / rel).write_text(text)
    return folder.commit()


# --------------------------------------------------------------------------- what overwrite may touch
def test_overwrite_replaces_only_what_sae_audit_wrote(tmp_path):
    out = tmp_path / "audit"
    with OutputFolder(out) as f:
        write(f, {"report.md": "old", "figures/a.png": "old a", "figures/b.png": "old b"})
    (out / "figures" / "my-plot.png").write_text("the user's own plot")
    (out / "notes.txt").write_text("the user's notes")
    with OutputFolder(out, overwrite=True) as f:
        write(f, {"report.md": "new", "figures/a.png": "new a"})
    got = snapshot(out)
    assert got.pop(MANIFEST)
    assert got == {"report.md": b"new", "figures/a.png": b"new a",  # b.png: ours and no longer used
                   "figures/my-plot.png": b"the user's own plot", "notes.txt": b"the user's notes"}
    assert json.loads((out / MANIFEST).read_text())["files"] == ["figures/a.png", "report.md"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging, lock or old copy left


def test_a_file_sae_audit_did_not_write_is_never_replaced(tmp_path):
    out = tmp_path / "audit"
    out.mkdir()
    (out / "report.md").write_text("written by hand")
    with OutputFolder(out, overwrite=True) as f:
        with pytest.raises(SaeAuditError, match="was not written by sae-audit"):
            write(f, {"report.md": "generated"})
    assert (out / "report.md").read_text() == "written by hand"


def test_without_overwrite_an_existing_folder_is_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_text("x")
    with pytest.raises(SaeAuditError, match="already exists and is not empty; pass `overwrite`"):
        check_out_dir(tmp_path / "a", overwrite=False)


@pytest.mark.parametrize("name", ["report.json", "audit.html", "table.csv"])
def test_a_folder_named_like_a_file_is_refused(tmp_path, name):
    with pytest.raises(SaeAuditError, match="looks like a file name"):
        check_out_dir(tmp_path / name, overwrite=False)
    assert not (tmp_path / name).exists()


# --------------------------------------------------------------------------- inputs and the working directory
def test_the_working_directory_and_its_parents_are_refused(tmp_path, monkeypatch):
    work = tmp_path / "project" / "work"
    work.mkdir(parents=True)
    (work / "precious.txt").write_text("keep me")
    monkeypatch.chdir(work)
    for out in (".", str(work), str(tmp_path / "project")):
        with pytest.raises(SaeAuditError, match="working directory"):
            OutputFolder(out, overwrite=True).__enter__()
    assert (work / "precious.txt").read_text() == "keep me"


def test_train_never_deletes_its_inputs(tiny_model_dir, tiny_image_folder, tmp_path, monkeypatch, capsys):
    project = tmp_path / "proj"
    project.mkdir()
    acts = project / "acts"
    assert main(["cache", str(tiny_model_dir), "--hook", "block.1", "--data", str(tiny_image_folder),
                 "--out", str(acts), "--device", "cpu", "-q"]) == 0
    before = snapshot(acts)
    train = ["--k", "4", "--expansion", "2", "--max-vectors", "64", "--eval-vectors", "32", "--sae-batch-size",
             "32", "--device", "cpu", "--overwrite", "-q"]
    assert main(["train", "--cache", str(acts), *train, "--out", str(project)]) == 2
    assert "contains an input of this run" in capsys.readouterr().err and snapshot(acts) == before
    assert main(["train", str(tiny_model_dir), "--hook", "block.1", "--data", str(tiny_image_folder), *train,
                 "--out", str(tiny_model_dir)]) == 2
    assert "is an input of this run" in capsys.readouterr().err
    assert (tiny_model_dir / "config.json").is_file()
    monkeypatch.chdir(project)
    assert main(["train", "--cache", "acts", *train, "--out", "."]) == 2
    assert "working directory" in capsys.readouterr().err and snapshot(acts) == before


def test_run_refuses_to_write_into_an_image_folder(tiny_model_dir, tiny_sae_dir, tiny_image_folder, tmp_path, capsys):
    ood = make_image_folder(tmp_path / "ood", n_per_class=2, classes=("a",), seed=3)
    before = snapshot(tiny_image_folder)
    for out in (tiny_image_folder, tiny_image_folder / "audit"):
        assert main(["run", str(tiny_model_dir), "--sae", str(tiny_sae_dir), "--id", str(tiny_image_folder),
                     "--ood", str(ood), "--out", str(out), "--overwrite", "--device", "cpu", "-q"]) == 2
        assert "--out" in capsys.readouterr().err
    assert snapshot(tiny_image_folder) == before


@pytest.mark.parametrize("where", ["proc", "file"])
def test_an_unwritable_out_fails_before_the_audit(tiny_model_dir, tiny_sae_dir, tiny_image_folder, tmp_path, where,
                                                  capsys):
    (tmp_path / "afile").write_text("x")
    out = "/proc/sae-audit-test" if where == "proc" else str(tmp_path / "afile" / "sub")
    t0 = time.perf_counter()
    assert main(["run", str(tiny_model_dir), "--sae", str(tiny_sae_dir), "--id", str(tiny_image_folder), "--ood",
                 str(tiny_image_folder) + "/.", "--out", out, "--device", "cpu", "-q"]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "Traceback" not in err
    assert time.perf_counter() - t0 < 20


# --------------------------------------------------------------------------- single files
def test_single_files_refuse_special_targets_and_keep_modes(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(SaeAuditError, match="not a regular file"):
        atomic_write_text(fifo, "x")
    link = tmp_path / "to-stdout"
    link.symlink_to("/dev/stdout")
    with pytest.raises(SaeAuditError, match="link into dev"):
        atomic_write_text(link, "x")
    assert link.is_symlink()
    target = tmp_path / "real.md"
    target.write_text("old")
    target.chmod(0o600)
    (tmp_path / "alias.md").symlink_to(target)
    atomic_write_text(tmp_path / "alias.md", "new")
    assert (tmp_path / "alias.md").is_symlink() and target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o600


def test_diff_refuses_to_write_over_its_inputs(tmp_path, capsys):
    demo = ROOT / "reports" / "demo" / "results.json"
    copy = tmp_path / "results.json"
    copy.write_bytes(demo.read_bytes())
    assert main(["report", "diff", str(copy), str(demo), "--out", str(copy)]) == 2
    assert copy.read_bytes() == demo.read_bytes()
    os.mkfifo(tmp_path / "pipe")
    assert main(["report", "diff", str(copy), str(demo), "--out", str(tmp_path / "pipe")]) == 2
    assert "not a regular file" in capsys.readouterr().err


# --------------------------------------------------------------------------- concurrency
def test_a_second_process_is_stopped_at_the_start(tmp_path):
    out, ready = tmp_path / "audit", tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import pathlib, time
        from sae_audit.outputs import OutputFolder
        with OutputFolder({str(out)!r}) as f:
            pathlib.Path({str(ready)!r}).write_text("locked")
            time.sleep(60)
        """)])
    try:
        deadline = time.time() + 60
        while not ready.exists() and time.time() < deadline:
            time.sleep(0.05)
        with pytest.raises(SaeAuditError, match="another sae-audit process is writing"):
            with OutputFolder(out, overwrite=True):
                pass
    finally:
        holder.kill()
        holder.wait()
    with OutputFolder(out, overwrite=True) as f:  # the lock dies with its process
        write(f, {"report.md": "ok"})


# --------------------------------------------------------------------------- all or nothing under SIGKILL
KILLER = r'''
import os, shutil, signal, sys
from pathlib import Path
from sae_audit import outputs

limit = int(sys.argv[2])
count = [0]

def step(fn):
    def wrapped(*a, **k):
        count[0] += 1
        if count[0] == limit:
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*a, **k)
    return wrapped

outputs.os.rename = step(os.rename)
outputs.os.replace = step(os.replace)
outputs._exchange = step(outputs._exchange)
outputs.shutil.rmtree = step(shutil.rmtree)
Path.write_text = step(Path.write_text)

out = Path(sys.argv[1])
gen = sys.argv[3]
with outputs.OutputFolder(out, overwrite=True) as f:
    stage = f.stage()
    for name in ("results.json", "report.md", "report.html", "figures/a.png"):
        (stage / name).parent.mkdir(parents=True, exist_ok=True)
        (stage / name).write_text(f"{gen} {name}")
    f.commit()
print("done", count[0])
'''


def _consistent(out: Path) -> str:
    """``"old"`` or ``"new"``: the folder holds one complete generation (and the user's file)."""
    files = snapshot(out)
    files.pop(MANIFEST, None)
    assert files.pop("mine.txt") == b"the user's"
    gens = {v.split()[0].decode() for v in files.values()}
    assert len(gens) == 1, f"a mix of generations: {files}"
    gen = gens.pop()
    assert set(files) == {"results.json", "report.md", "report.html", "figures/a.png"}
    return gen


def test_a_kill_at_any_step_leaves_the_old_or_the_new_report(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(KILLER)
    killed_at = []
    n = 1
    while True:
        out = tmp_path / f"audit-{n}"
        assert subprocess.run([sys.executable, str(script), str(out), "0", "old"], capture_output=True).returncode == 0
        (out / "mine.txt").write_text("the user's")
        p = subprocess.run([sys.executable, str(script), str(out), str(n), "new"], capture_output=True, text=True)
        if p.returncode == 0:
            break
        assert p.returncode == -signal.SIGKILL, p.stderr
        killed_at.append(n)
        # The next run cleans up or recovers, and the folder is one complete report.
        with OutputFolder(out, overwrite=True):
            pass
        assert _consistent(out) in ("old", "new")
        assert not [q for q in tmp_path.iterdir() if q.name.startswith(f".audit-{n}.")]
        n += 1
    assert _consistent(out) == "new"
    assert len(killed_at) >= 8  # every write, rename, exchange and removal was a kill point

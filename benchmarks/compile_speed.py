"""Does ``torch.compile`` pay for the audit's forward? Eager against compiled blocks, same model and batches.

The audit's forward stops after the deepest hooked block (a hook raises, see
``sae_audit.models.capture``), which a whole-model ``torch.compile`` cannot
trace, so each transformer block's ``forward`` is compiled (inductor, static
shapes) and the stopped forward of the real DINOv2 ViT-S/14 at 112 px (block 8)
is timed on ``--batch`` random images, eager and compiled alternately. The JSON
records the compile time (the first call) and seconds per batch of each; an
audit of ``--images`` images pays the compile time once.

    python benchmarks/compile_speed.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _common import interleaved, load, machine, median, table, write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / ".cache/models/dinov2-small-imgfocus"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--images", type=int, default=256, help="images of the audit the compile time is spread over")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    if not (MODEL / "config.json").is_file():
        print(f"compile_speed: {MODEL} is missing; run scripts/setup.sh first", file=sys.stderr)
        return 2
    from sae_audit.models import ModelSpec, capture, load_model

    doc = {"benchmark": "compile_speed", "machine": machine(), "batch": args.batch, "load_before": load()}
    pv = torch.randn(args.batch, 3, 112, 112)
    eager = load_model(ModelSpec(str(MODEL), device="cpu", image_size=112))
    compiled = load_model(ModelSpec(str(MODEL), device="cpu", image_size=112))
    for block in compiled.adapter.blocks(compiled.model):
        block.forward = torch.compile(block.forward, dynamic=False)
    t = time.perf_counter()
    capture(compiled, pv, ["block.8"])
    doc["compile_seconds"] = round(time.perf_counter() - t, 1)
    capture(eager, pv, ["block.8"])
    times = interleaved({"eager": lambda: capture(eager, pv, ["block.8"]),
                         "compiled": lambda: capture(compiled, pv, ["block.8"])}, rounds=args.rounds)
    per_batch = {k: round(median(v), 3) for k, v in times.items()}
    n_batches = args.images / args.batch
    doc.update({"seconds_per_batch": per_batch, "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
                "compiled_speedup_per_batch": round(per_batch["eager"] / per_batch["compiled"], 3),
                f"audit_of_{args.images}_images_seconds": {
                    "eager": round(per_batch["eager"] * n_batches, 1),
                    "compiled (with compile time)": round(per_batch["compiled"] * n_batches + doc["compile_seconds"], 1)},
                "load_after": load()})
    doc["tables"] = [table(["forward", "s per batch", "compile s", f"forward of {args.images} images, s"],
                           [["eager", per_batch["eager"], 0, round(per_batch["eager"] * n_batches, 1)],
                            ["torch.compile (per block)", per_batch["compiled"], doc["compile_seconds"],
                             round(per_batch["compiled"] * n_batches + doc["compile_seconds"], 1)]],
                           title=f"Stopped forward (block 8), batch {args.batch}, float32 (medians of {args.rounds} "
                                 f"interleaved rounds; load {doc['load_before'][0]:.1f})")]
    write_json("compile_speed", doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())

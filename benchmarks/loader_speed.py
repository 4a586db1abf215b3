"""Image decoding overlapped with the forward: calling thread vs thread pool vs torch DataLoader processes.

An image set is read through :func:`sae_audit.data.iter_batches` and each batch
goes through the real DINOv2 ViT-S/14 at 112 px up to block 8 (what an audit
does per batch before the SAEs), with

- ``serial``: decoding in the calling thread (``num_workers=0``);
- ``threads N``: the thread pool (``workers="threads"``);
- ``processes N``: torch ``DataLoader`` worker processes (``workers="processes"``).

Sets: a folder of photo-sized JPEGs (640 x 480, written once into a temporary
folder; decoding them is the expensive case) and the Openclipart PNGs. Timed
alternately (``--rounds``), medians; the batches must be identical.

    python benchmarks/loader_speed.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _common import interleaved, load, machine, median, table, write_json  # noqa: E402

MODEL = Path(__file__).resolve().parents[1] / ".cache/models/dinov2-small-imgfocus"


def jpeg_folder(folder: Path, n: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:480, 0:640]
    for i in range(n):
        c = rng.uniform(0, 1, size=(3, 3))
        img = (np.stack([np.sin(xx / (20 + 30 * c[k, 0]) + c[k, 1] * 6) * np.cos(yy / (25 + 20 * c[k, 2]))
                         for k in range(3)], -1) * 100 + 128 + rng.normal(0, 12, (480, 640, 3)))
        cls = folder / f"c{i % 4}"
        cls.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(cls / f"{i:04d}.jpg", quality=90)
    return folder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="loader_speed")
    args = ap.parse_args(argv)
    from sae_audit.data import iter_batches, open_image_set
    from sae_audit.models import ModelSpec, capture, load_model

    vm = load_model(ModelSpec(str(MODEL), device="cpu", image_size=112))
    doc = {"benchmark": "loader_speed", "machine": machine(), "images": args.images, "batch": args.batch,
           "load_before": load(), "sets": []}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sets = {"JPEG 640x480": open_image_set(str(jpeg_folder(Path(tmp) / "jpeg", args.images))),
                "clipart PNG": open_image_set("clipart", args.images, 0)}
        for set_name, image_set in sets.items():
            variants = {"serial": dict(num_workers=0), "threads 2": dict(num_workers=2),
                        "processes 1": dict(num_workers=1, workers="processes"),
                        "processes 2": dict(num_workers=2, workers="processes")}
            seen = {}

            def run(name, kw):
                def f():
                    idx = []
                    for b in iter_batches(image_set, vm.preprocess, args.batch, **kw):
                        capture(vm, b.pixel_values, ["block.8"])
                        idx.append(b.indices)
                    seen[name] = torch.cat(idx)
                return f

            fns = {n: run(n, kw) for n, kw in variants.items()}
            decode_only = {n: (lambda kw=kw: [None for _ in iter_batches(image_set, vm.preprocess, args.batch, **kw)])
                           for n, kw in variants.items()}
            for f in fns.values():
                f()
            assert all(torch.equal(v, seen["serial"]) for v in seen.values()), "variants gave different batches"
            before = load()
            times = interleaved(fns, rounds=args.rounds)
            t_decode = interleaved({"serial": decode_only["serial"]}, rounds=1)["serial"][0]
            med = {n: median(t) for n, t in times.items()}
            best = min(med, key=med.get)
            entry = {"set": set_name, "seconds": {n: [round(v, 3) for v in t] for n, t in times.items()},
                     "images_per_second": {n: round(args.images / v, 2) for n, v in med.items()},
                     "decode_and_preprocess_alone_s": round(t_decode, 3), "fastest": best,
                     "speedup_vs_serial": {n: round(med["serial"] / v, 3) for n, v in med.items()},
                     "load_before": before, "load_after": load()}
            doc["sets"].append(entry)
            rows.append([set_name, round(t_decode / med["serial"] * 100, 1),
                         *[round(args.images / med[n], 2) for n in variants], best, f"{before[0]:.1f}"])
    doc["load_after"] = load()
    doc["tables"] = [table(["set", "decode+preprocess % of serial", *[f"{n} img/s" for n in variants], "fastest",
                            "load"], rows,
                           title=f"Decoding beside the forward, {args.images} images, batch {args.batch} "
                                 f"(medians of {args.rounds} interleaved rounds)")]
    write_json(args.out, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())

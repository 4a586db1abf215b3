"""Shared helpers of the speed benchmarks: interleaved timing, machine description, tables, JSON.

Ratios are what the benchmarks report: on a shared machine absolute numbers
move with the load, so every comparison times both sides in the same process,
alternating (ours, theirs, theirs, ours, ...) over several rounds, and takes
medians. The load average (``os.getloadavg``) is recorded before and after.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """What the numbers were measured on: CPU, cores, torch build and threads, GPU if any."""
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        flags = ""
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cpu_bf16": any(f in flags.split() for f in ("avx512_bf16", "amx_bf16")),
        "amx": "amx_bf16" in flags.split(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        info["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                     cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["git"] = None
    return info


def load() -> list[float]:
    """The 1-, 5- and 15-minute load averages."""
    return [round(v, 2) for v in os.getloadavg()]


def interleaved(fns: dict[str, Callable[[], None]], rounds: int, repeat: int = 1,
                sync: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Seconds per call of each function, timed alternately.

    Each round runs every function ``repeat`` times and records its mean time;
    the order rotates from round to round so none always runs first after the
    others. Returns ``{name: [seconds per call, one per round]}``.
    """
    names = list(fns)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        if r % 2:
            order = order[::-1]
        for n in order:
            if sync:
                sync()
            t = time.perf_counter()
            for _ in range(repeat):
                fns[n]()
            if sync:
                sync()
            out[n].append((time.perf_counter() - t) / repeat)
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def table(headers: list[str], rows: list[list], title: str | None = None) -> str:
    """A Markdown pipe table (numbers right-aligned), printed and returned."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [all(isinstance(r[i], (int, float)) for r in rows) if rows else False for i in range(len(headers))]
    line = lambda vals: "| " + " | ".join(v.rjust(w) if num else v.ljust(w)  # noqa: E731
                                          for v, w, num in zip(vals, widths, numeric)) + " |"
    sep = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric)) + "|"
    text = "\n".join(([f"\n### {title}\n"] if title else []) + [line(headers), sep] + [line(c) for c in cells])
    print(text, flush=True)
    return text


def write_json(name: str, doc: dict) -> Path:
    """Write ``doc`` to ``benchmarks/results/<name>.json`` (atomically) and return the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}", file=sys.stderr)
    return path


# The real model, sets and SAE shape the audit benchmarks share.
REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / ".cache/models/dinov2-small-imgfocus"
ID_SET, OOD_SET = "fashion-mnist:test", "digits"


def make_saes(folder: Path, n: int = 2, d_sae: int = 1536, k: int = 16) -> list[str]:
    from sae_audit.sae import SAEConfig, TopKSAE

    out = []
    for i in range(n):
        cfg = SAEConfig(d_in=384, d_sae=d_sae, k=k, hook_point="block.8", tokens="patch", image_size=112)
        path = folder / f"sae{i}"
        TopKSAE(cfg, seed=i).save_pretrained(path, readme="benchmark SAE (random weights)\n")
        out.append(str(path))
    return out

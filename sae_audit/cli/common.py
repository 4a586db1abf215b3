"""What every command shares: options read from the library's request dataclasses, and output.

An option's default, help and choices come from the field it sets
(:func:`sae_audit.options.option_info`), so the command line never repeats
a library default. Each sub-command records which flag sets which field, so
a library error naming a field (`` `image_size` ``) is shown with the flag the
user typed (``--image-size``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING

from sae_audit.data import ImageOptions
from sae_audit.models import ModelSpec
from sae_audit.options import option_info


def flags_of(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The ``{field: flag}`` map of a sub-command (created on first use)."""
    flags = parser.get_default("flags")
    if flags is None:
        flags = {}
        parser.set_defaults(flags=flags)
    return flags


def _default_text(value) -> str:
    if isinstance(value, bool):
        return ""
    if isinstance(value, (tuple, list)):
        value = " ".join(map(str, value)) if value else None
    return "" if value is None or value is MISSING else f" (default {value})"


def add(parser: argparse.ArgumentParser, flag: str, cls: type, name: str, *, field: str | None = None,
        help_extra: str = "", **kwargs) -> argparse.Action:
    """Add ``flag`` for field ``name`` of dataclass ``cls``: its default, help, choices and metavar.

    ``field`` is how library errors name it (default ``name``); other keyword
    arguments go to ``add_argument`` (``type``, ``nargs``, ``action``, ``required``).
    """
    info = option_info(cls, name)
    if info.default is not MISSING and "default" not in kwargs and kwargs.get("action") != "append":
        kwargs["default"] = list(info.default) if isinstance(info.default, tuple) else info.default
    if info.default is MISSING and flag.startswith("-") and "required" not in kwargs:
        kwargs["required"] = True
    if info.choices and "choices" not in kwargs:
        kwargs["choices"] = list(info.choices)
    if info.metavar and "metavar" not in kwargs and kwargs.get("action") not in ("store_true",):
        kwargs["metavar"] = info.metavar
    shown = kwargs.get("default", info.default)
    kwargs["help"] = info.help + help_extra + ("" if kwargs.get("required") else _default_text(shown))
    action = parser.add_argument(flag, **kwargs)
    flags_of(parser)[field or name] = flag if flag.startswith("-") else flag.upper()
    return action


def add_model_options(p: argparse.ArgumentParser, model_optional: bool = False, naming: bool = False) -> None:
    """The model positional and ``--revision --device --dtype --image-size --trust-remote-code``
    (and ``--model-name`` when ``naming``: commands that write reports)."""
    if model_optional:
        add(p, "model", ModelSpec, "name", field="model", nargs="?",
            help_extra=" (omit it with --cache)", default=None, metavar="MODEL")
    else:
        add(p, "model", ModelSpec, "name", field="model", metavar="MODEL")
    flags_of(p)["name"] = "MODEL"
    add(p, "--revision", ModelSpec, "revision")
    add(p, "--device", ModelSpec, "device")
    add(p, "--dtype", ModelSpec, "dtype")
    add(p, "--image-size", ModelSpec, "image_size", type=int)
    add(p, "--trust-remote-code", ModelSpec, "trust_remote_code", action="store_true")
    if naming:
        add(p, "--model-name", ModelSpec, "display_name", dest="display_name")


def add_image_options(p: argparse.ArgumentParser) -> None:
    """``--batch-size --max-images --seed --strict``."""
    add(p, "--batch-size", ImageOptions, "batch_size", type=int)
    add(p, "--max-images", ImageOptions, "max_images", type=int)
    add(p, "--seed", ImageOptions, "seed", type=int)
    add(p, "--strict", ImageOptions, "strict", action="store_true")
    add(p, "--max-pixels", ImageOptions, "max_pixels", type=int)


def add_quiet(p: argparse.ArgumentParser, fail_on: bool = False) -> None:
    p.add_argument("-q", "--quiet", action="store_true",
                   help=("errors and --fail-on outcomes only" if fail_on else "errors only")
                   + ": no progress bars, warnings or file names")


def model_spec(args) -> ModelSpec:
    return ModelSpec(args.model, revision=args.revision, device=args.device, dtype=args.dtype,
                     image_size=args.image_size, trust_remote_code=args.trust_remote_code,
                     display_name=getattr(args, "display_name", None))


def image_options(args) -> ImageOptions:
    return ImageOptions(batch_size=args.batch_size, max_images=args.max_images, seed=args.seed, strict=args.strict,
                        max_pixels=args.max_pixels)


def info(args, msg: str) -> None:
    """A message on stderr, unless ``--quiet``."""
    if not getattr(args, "quiet", False):
        print(msg, file=sys.stderr, flush=True)

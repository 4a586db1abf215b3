"""Opening files a user hands us: regular files only, with size caps, and JSON that cannot blow the stack.

Every place that opens a user-supplied file (an image, an IDX file, an SAE's
config or weights, a model card) goes through this module, so one set of rules
holds everywhere:

- Only *regular* files are read. The path is checked with :func:`os.stat`
  (which follows symbolic links) before it is opened, and the opened
  descriptor is checked again with :func:`os.fstat` (the file cannot be swapped
  for a FIFO in between: the open itself uses ``O_NONBLOCK``, so opening a FIFO
  never waits for a writer). A FIFO, a socket, a device such as ``/dev/zero``
  or a symbolic link to one is refused with a message that names what it is,
  instead of hanging or reading forever.
- Reads are capped: :func:`read_bytes` refuses a file larger than its
  ``max_bytes`` before reading it, and never reads more than ``max_bytes``
  even if the file grows meanwhile. :data:`MAX_CONFIG_BYTES` is the cap for
  JSON configs and headers.
- :func:`parse_json` turns every way JSON can fail, including nesting deep
  enough to exhaust Python's recursion limit (``RecursionError`` in the C
  decoder), into one :class:`~sae_audit.errors.SaeAuditError` line.
- :func:`gunzip_bytes` decompresses at most ``max_bytes`` (a gzip "bomb" of a
  few megabytes that expands to gigabytes is refused, not inflated).
- :func:`printable` gives a display form of a file name that is always valid,
  printable UTF-8 (undecodable bytes and control characters become
  backslash escapes).

This module imports nothing from sae_audit but :mod:`sae_audit.errors`, so any
layer can use it.
"""

from __future__ import annotations

import json
import os
import stat
import unicodedata
import zlib
from typing import Any, BinaryIO

from sae_audit.errors import SaeAuditError

__all__ = [
    "MAX_CONFIG_BYTES",
    "check_regular",
    "describe_mode",
    "gunzip_bytes",
    "json_type",
    "open_regular",
    "parse_json",
    "printable",
    "read_bytes",
    "read_json_file",
    "read_text",
]

#: Largest JSON config / header file read (4 MiB). Real configs (SAELens
#: ``cfg.json``, sparsify ``cfg.json``, our ``config.json``, saev headers) are a
#: few kilobytes.
MAX_CONFIG_BYTES = 4 << 20

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def describe_mode(mode: int) -> str:
    """What kind of file ``mode`` (an ``st_mode``) is, in words: ``"a FIFO (named pipe)"``, ...."""
    if stat.S_ISREG(mode):
        return "a regular file"
    for test, words in _KINDS:
        if test(mode):
            return words
    return "not a regular file"


# Characters a name is shown without: controls (newline, escape, ...), line and paragraph separators, and
# the bidirectional overrides that can make a name display as another one.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(name: str | bytes | os.PathLike) -> str:
    """A display form of a path or file name that is always valid, printable UTF-8.

    Bytes that are not UTF-8 (which :func:`os.fsdecode` keeps as lone
    surrogates) become ``\\xNN``; control characters (newline, escape, ...),
    line and paragraph separators and bidirectional overrides become escapes
    such as ``\\n``, ``\\x1b`` or ``\\u202e``. Every other name, in any script
    and with any spaces, is returned unchanged.
    """
    try:
        raw = os.fsencode(name)
    except UnicodeEncodeError:  # a surrogate that is not a surrogate-escaped byte
        raw = os.fspath(name).encode("utf-8", "surrogatepass")  # type: ignore[union-attr]
    text = raw.decode("utf-8", "backslashreplace")
    if all(ch.isprintable() for ch in text):
        return text
    return "".join(
        ch.encode("unicode_escape").decode("ascii")
        if unicodedata.category(ch) in _HIDDEN_CATEGORIES or ch in _BIDI_CONTROLS else ch
        for ch in text
    )


def check_regular(path: str | os.PathLike, what: str = "file") -> os.stat_result:
    """``os.stat(path)`` (links followed) when ``path`` is a regular file; SaeAuditError otherwise.

    Args:
        path: the file.
        what: how messages name it (``"model card"``, ``"SAE config"``, ...).
    Returns:
        The :class:`os.stat_result` of the file the path leads to.
    Raises:
        SaeAuditError: the path does not exist, is a dangling or looping
            symbolic link, cannot be examined (permissions), or leads to
            anything but a regular file (a FIFO, a device, a socket, a folder).
    """
    shown = printable(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise SaeAuditError(f"{what} {shown} is a symbolic link to a file that does not exist") from None
        raise SaeAuditError(f"{what} {shown} does not exist") from None
    except OSError as exc:  # ELOOP, EACCES, ENAMETOOLONG, ENOTDIR
        raise SaeAuditError(f"cannot open {what} {shown}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SaeAuditError(
            f"{what} {shown} is {describe_mode(st.st_mode)}, not a regular file; sae-audit reads only "
            "regular files (never pipes or devices)"
        )
    return st


def open_regular(path: str | os.PathLike, what: str = "file", max_bytes: int | None = None) -> BinaryIO:
    """Open the regular file ``path`` for binary reading (a FIFO is never waited on, a device never read).

    Args:
        max_bytes: refuse a file larger than this (checked on the opened file).
    Raises:
        SaeAuditError: see :func:`check_regular`; or the file is over ``max_bytes``.
    """
    fd, st = _open_regular(path, what)
    fh = os.fdopen(fd, "rb")
    if max_bytes is not None and st.st_size > max_bytes:
        fh.close()
        raise _too_large(path, st.st_size, max_bytes, what)
    return fh


def _too_large(path, size: int, max_bytes: int, what: str) -> SaeAuditError:
    return SaeAuditError(
        f"{what} {printable(path)} is {size:,} bytes, more than the {max_bytes:,} bytes sae-audit reads for a "
        f"{what}; is it the right file?"
    )


def _open_regular(path: str | os.PathLike, what: str) -> tuple[int, os.stat_result]:
    check_regular(path, what)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise SaeAuditError(f"cannot open {what} {printable(path)}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped between stat and open
            raise SaeAuditError(f"{what} {printable(path)} is {describe_mode(st.st_mode)}, not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_bytes(path: str | os.PathLike, max_bytes: int, what: str = "file") -> bytes:
    """The content of the regular file ``path``, refusing files over ``max_bytes``.

    Raises:
        SaeAuditError: not a regular file (see :func:`check_regular`), larger
            than ``max_bytes`` (checked before reading, and again while reading
            so a growing file is not read past the cap), or unreadable.
    """
    with open_regular(path, what, max_bytes) as fh:
        try:
            data = fh.read(max_bytes + 1)
        except OSError as exc:
            raise SaeAuditError(f"cannot read {what} {printable(path)}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise SaeAuditError(f"{what} {printable(path)} grew past {max_bytes:,} bytes while it was read")
    return data


def read_text(path: str | os.PathLike, max_bytes: int, what: str = "file") -> str:
    """:func:`read_bytes` decoded as UTF-8 (a byte-order mark is kept as ``\\ufeff``).

    Raises:
        SaeAuditError: as :func:`read_bytes`, or the bytes are not UTF-8.
    """
    data = read_bytes(path, max_bytes, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SaeAuditError(f"{what} {printable(path)} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def json_type(value: Any) -> str:
    """The JSON type of ``value`` in words (``"a string"``, ``"a list"``, ``"an object"``, ...), for messages."""
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def parse_json(text: str | bytes, where: str, not_json: str | None = None) -> Any:
    """``json.loads(text)``, with every failure as one SaeAuditError line naming ``where``.

    Args:
        not_json: the whole message to use when ``text`` is not JSON at all
            (default: "``where`` is not valid JSON (reason)"); nesting too deep
            always gets its own message.
    Raises:
        SaeAuditError: invalid JSON (with line and column), JSON nested too
            deeply for Python to decode (``RecursionError``), numbers too long
            to convert, or bytes that are not UTF-8.
    """
    try:
        return json.loads(text)
    except RecursionError:
        raise SaeAuditError(
            f"{where} is nested too deeply (lists or objects inside each other thousands of levels deep); "
            "it is not a config sae-audit can read"
        ) from None
    except json.JSONDecodeError as exc:
        raise SaeAuditError(not_json or f"{where} is not valid JSON ({exc.msg} at line {exc.lineno}, column "
                            f"{exc.colno})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise SaeAuditError(not_json or f"{where} is not valid JSON ({str(exc).splitlines()[0][:200]})") from None


def read_json_file(path: str | os.PathLike, what: str = "JSON file", max_bytes: int = MAX_CONFIG_BYTES,
                   expect_object: bool = True) -> Any:
    """The JSON value in the regular file ``path`` (at most ``max_bytes``).

    Raises:
        SaeAuditError: see :func:`read_bytes` and :func:`parse_json`; with
            ``expect_object``, the value is not a JSON object (the message
            names the type it is).
    """
    data = parse_json(read_bytes(path, max_bytes, what), f"{what} {printable(path)}")
    if expect_object and not isinstance(data, dict):
        raise SaeAuditError(f"{what} {printable(path)} must hold a JSON object, not {json_type(data)}")
    return data


def gunzip_bytes(data: bytes, max_bytes: int, where: str) -> bytes:
    """Decompress gzip ``data`` to at most ``max_bytes`` bytes.

    Raises:
        SaeAuditError: the data is not gzip, is truncated or corrupt, or
            expands to more than ``max_bytes`` (decompression stops there).
    """
    out = bytearray()
    rest = data
    try:
        while rest:
            d = zlib.decompressobj(wbits=31)  # gzip wrapper; a file may hold several members
            out += d.decompress(rest, max_bytes + 1 - len(out))
            if len(out) > max_bytes:
                raise SaeAuditError(
                    f"{where} expands to more than {max_bytes:,} bytes when decompressed; decompress it "
                    "yourself (gunzip) and pass the raw file if it is genuine"
                )
            if d.unconsumed_tail:
                raise SaeAuditError(f"{where} expands to more than {max_bytes:,} bytes when decompressed")
            if not d.eof:
                raise SaeAuditError(f"{where} is a truncated gzip file; copy it again")
            rest = d.unused_data.lstrip(b"\0")
    except zlib.error as exc:
        raise SaeAuditError(f"{where} is a corrupt gzip file ({exc}); copy it again") from None
    return bytes(out)

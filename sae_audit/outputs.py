"""Writing what sae-audit produces without ever losing a user's data.

One mechanism serves every command that writes a folder (:class:`OutputFolder`):

- **checks before any work**: the folder is not a file, not the working
  directory or one of its parents, and neither equals nor contains an input
  of the run (a model, an SAE, a cache, an image set, a results file), nor lies
  inside an image-set folder;
- **an exclusive lock for the whole run** (``fcntl.flock`` on a lock file beside
  the folder): a second process writing the same folder stops at once with a
  clear message instead of overwriting at the end;
- **a manifest** (``.sae-audit-manifest.json``) lists what the tool wrote, so
  ``overwrite`` only ever replaces or removes those files; anything else in
  the folder (a user's own plot, notes) is carried over untouched, and a file
  the tool did not write is never replaced;
- **all-or-nothing**: the new output is written into a temporary sibling
  folder and swapped in with one atomic rename (Linux ``renameat2`` with
  ``RENAME_EXCHANGE``; elsewhere two renames, recovered by the next run), so a
  kill at any moment leaves the complete old output or the complete new one,
  never a mix. Leftovers of a killed run are recovered or cleaned up by the next.

Single files (a diff, a card) go through :func:`atomic_write_bytes`, which
refuses to replace anything but a regular file and keeps the file's
permission bits.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import stat
import tempfile
import uuid
from pathlib import Path

from sae_audit.errors import SaeAuditError

__all__ = ["MANIFEST", "OutputFolder", "atomic_write_bytes", "atomic_write_text", "check_out_dir",
           "check_target_file"]

MANIFEST = ".sae-audit-manifest.json"
MANIFEST_VERSION = 1
_PREFIX = ".sae-audit-"  # sibling staging, old-output and lock names start with ".<folder name>.sae-audit-"
_RENAME_EXCHANGE = 2
#: Suffixes of files sae-audit writes: an output *folder* named like one is a mistake.
FILE_SUFFIXES = (".json", ".md", ".html", ".csv", ".parquet", ".png", ".safetensors", ".txt")


# --------------------------------------------------------------------------- single files
def check_target_file(path: str | os.PathLike, field: str = "out") -> Path:
    """Refuse to write over anything but a regular file (a FIFO, a device, a folder, ``/proc``...).

    A symbolic link to a regular file is followed: the link is kept and its target rewritten.

    Returns:
        The path to write (the link's target for a link).

    Raises:
        SaeAuditError: the path exists and is not a regular file (or a link to one), naming ``field``.
    """
    path = Path(path)
    try:
        st = os.stat(path)  # follows links
    except FileNotFoundError:
        if path.is_symlink():
            raise SaeAuditError(f"`{field}` {path} is a broken symbolic link; remove it or name another file",
                                field=field) from None
        return path
    except OSError as exc:
        raise SaeAuditError(f"`{field}` {path} cannot be examined ({exc.strerror})", field=field) from None
    if stat.S_ISDIR(st.st_mode):
        raise SaeAuditError(f"`{field}` {path} is a folder; name a file inside it", field=field)
    if not stat.S_ISREG(st.st_mode):
        raise SaeAuditError(f"`{field}` {path} is not a regular file (a device, FIFO or special file); sae-audit "
                            "only writes regular files", field=field)
    hop, seen = path, 0
    while hop.is_symlink() and seen < 40:  # every hop of a link chain, not only its end (/dev/stdout -> /proc/...)
        hop = Path(os.path.join(hop.parent, os.readlink(hop)))
        seen += 1
        if str(Path(os.path.abspath(hop))).startswith(("/proc/", "/sys/", "/dev/")):
            raise SaeAuditError(f"`{field}` {path} is a link into {Path(os.path.abspath(hop)).parts[1]}; name an "
                                "ordinary file", field=field)
    return Path(os.path.realpath(path))


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: int | None = None, field: str = "out") -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    A crash or error half-way leaves the previous file (if any) untouched. An
    existing file keeps its permission bits; a new one gets ``mode`` (default
    ``0o644``). A link to a regular file is written through (the link stays).

    Raises:
        SaeAuditError: ``path`` is not a regular file, or its folder cannot be written.
    """
    target = check_target_file(path, field)
    if mode is None:
        mode = stat.S_IMODE(os.stat(target).st_mode) if target.exists() else 0o644
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    except OSError as exc:
        raise SaeAuditError(f"cannot write {target}: {exc.strerror}", field=field) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, mode: int | None = None, field: str = "out") -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"), mode, field)


# --------------------------------------------------------------------------- folders
def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def _within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_out_dir(path: str | os.PathLike, overwrite: bool, field: str = "out", inputs=(),
                  image_folders=()) -> Path:
    """The checks every command makes on its output folder before any work; nothing is written.

    Args:
        path: the output folder.
        overwrite: whether replacing sae-audit's own files in an existing folder is allowed.
        field: how messages name the parameter.
        inputs: paths the run reads (model, SAE, cache, results file, image sets):
            the folder may neither equal nor contain one.
        image_folders: image-set folders: the folder may not lie inside one either
            (its files would become images of the set).

    Raises:
        SaeAuditError: the folder is a file, is the working directory or one of its
            parents, equals or contains an input, lies inside an image folder, or
            holds sae-audit output and ``overwrite`` is false.
    """
    out = Path(path)
    real = _resolved(out)
    if not out.exists() and out.suffix.lower() in FILE_SUFFIXES:
        raise SaeAuditError(f"`{field}` {out} names a folder but looks like a file name ({out.suffix}); sae-audit "
                            f"writes several files there: name a folder, e.g. {out.with_suffix('')}", field=field)
    if out.exists() and not out.is_dir():
        raise SaeAuditError(f"`{field}` {out} exists and is a file, not a folder; name a folder", field=field)
    cwd = _resolved(os.getcwd())
    if _within(cwd, real):
        what = "the working directory" if cwd == real else "a parent of the working directory"
        raise SaeAuditError(f"`{field}` {out} is {what}; name a new or sae-audit output folder", field=field)
    for p in inputs:
        if p is None or not os.path.lexists(os.fspath(p)):
            continue
        rp = _resolved(p)
        if _within(rp, real):
            what = "is" if rp == real else "contains"
            raise SaeAuditError(f"`{field}` {out} {what} an input of this run ({p}); name another folder",
                                field=field)
    for p in image_folders:
        if p is not None and Path(p).is_dir() and _within(real, _resolved(p)):
            raise SaeAuditError(f"`{field}` {out} lies inside the image folder {p}, whose images this run reads; "
                                "name a folder outside it", field=field)
    if out.is_dir() and not overwrite:
        owned = _manifest_files(out)
        if owned or any(out.iterdir()):
            hint = " (it holds sae-audit output)" if owned else ""
            raise SaeAuditError(f"output folder {out} (`{field}`) already exists and is not empty{hint}; pass "
                                "`overwrite` to replace the files sae-audit wrote there", field=field)
    return out


def _manifest(folder: Path) -> dict:
    """A folder's manifest (``{}`` without a readable one)."""
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _manifest_files(folder: Path) -> list[str]:
    """The relative paths a folder's manifest lists (empty without a readable manifest)."""
    files = _manifest(folder).get("files", [])
    return [f for f in files if isinstance(f, str) and _safe_rel(f)] if isinstance(files, list) else []


def _safe_rel(rel: str) -> bool:
    p = Path(rel)
    return bool(rel) and not p.is_absolute() and ".." not in p.parts


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` where unavailable."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


class OutputFolder:
    """A folder sae-audit writes as a whole: checked, locked, staged and swapped in (see the module doc).

    Use::

        with OutputFolder(out, overwrite=True, inputs=[model_dir, sae_dir]) as folder:
            ...                                  # the long work; the lock is held
            stage = folder.stage()               # an empty sibling folder
            (stage / "report.md").write_text(...)
            folder.commit()                      # atomic swap; the manifest lists what was written

    Raises:
        SaeAuditError: at ``__enter__``: the checks of :func:`check_out_dir`, or
            another process holds the folder's lock; at :meth:`commit`: a file the
            new output would replace was not written by sae-audit, or the disk failed.
    """

    def __init__(self, path: str | os.PathLike, *, overwrite: bool = False, inputs=(), image_folders=(),
                 keep=(), field: str = "out"):
        self.path = Path(path)
        self.overwrite, self.image_folders, self.field = overwrite, tuple(image_folders), field
        # Files of an earlier output that this run reads (e.g. the results.json a report is re-rendered from)
        # stay where they are: they are inputs the folder may hold, and the new output keeps them.
        self.keep = [Path(os.path.relpath(_resolved(k), _resolved(self.path))).as_posix() for k in keep]
        if any(not _safe_rel(k) for k in self.keep):
            raise SaeAuditError(f"`{field}`: files to keep must lie inside {self.path}", field=field)
        kept = {_resolved(self.path / k) for k in self.keep}
        self.inputs = tuple(p for p in inputs if p is not None and _resolved(p) not in kept)
        self._lock_fd: int | None = None
        self._lock_path: Path | None = None
        self._stage: Path | None = None
        self.committed = False

    # -- lifecycle -----------------------------------------------------------
    def __enter__(self) -> "OutputFolder":
        check_out_dir(self.path, self.overwrite, self.field, self.inputs, self.image_folders)
        parent = self.path.parent if str(self.path.parent) else Path(".")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SaeAuditError(f"cannot create {parent} for `{self.field}` {self.path}: {exc.strerror}",
                                field=self.field) from None
        if not os.access(parent, os.W_OK | os.X_OK):
            raise SaeAuditError(f"`{self.field}` {self.path}: the folder {parent} is not writable", field=self.field)
        self._lock()
        try:
            self._recover()
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._stage is not None and not self.committed:
            shutil.rmtree(self._stage, ignore_errors=True)
        self._unlock()

    def _sibling(self, kind: str) -> Path:
        return self.path.parent / f".{self.path.name}{_PREFIX}{kind}"

    def _lock(self) -> None:
        import fcntl

        lock = self._sibling("lock")
        while True:
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise SaeAuditError(f"cannot lock `{self.field}` {self.path}: {exc.strerror}",
                                    field=self.field) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise SaeAuditError(f"another sae-audit process is writing {self.path} (`{self.field}`); wait for it "
                                    "to finish or name another folder", field=self.field) from None
            # The lock file may have been removed by its previous holder between our open and flock.
            try:
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._lock_fd, self._lock_path = fd, lock
                return
            os.close(fd)

    def _unlock(self) -> None:
        if self._lock_fd is None:
            return
        with contextlib.suppress(OSError):
            self._lock_path.unlink()
        os.close(self._lock_fd)
        self._lock_fd = None

    def _recover(self) -> None:
        """Repair what a killed run left beside the folder (see :meth:`commit` for the names).

        ``staging-*``: an output never committed, only sae-audit's files: removed.
        ``new-<token>``: a commit under way. If the folder's manifest carries the
        token, the swap happened and the sibling holds the *old* output: its
        files that sae-audit did not write are carried into the folder, the rest
        removed. Otherwise the swap did not happen: the sibling holds the new
        output, only sae-audit's files: removed. ``old-<token>``: the old output
        moved aside by the two-rename swap: put back if the folder is missing,
        else treated as above.
        """
        parent = self.path.parent
        mine = f".{self.path.name}{_PREFIX}"
        current = _manifest(self.path).get("token")
        leftovers = sorted(p for p in parent.glob(f"{mine}*") if p.is_dir() and not p.is_symlink())
        for p in leftovers:  # old copies first: they may have to go back in place
            kind = p.name[len(mine):]
            if kind.startswith("old-") and not os.path.lexists(self.path):
                os.rename(p, self.path)
                current = _manifest(self.path).get("token")
        for p in leftovers:
            if not p.exists():
                continue
            kind = p.name[len(mine):]
            if kind.startswith("old-") or (kind.startswith("new-") and kind[4:] == current):
                self._carry_foreign(p, self.path)
            shutil.rmtree(p, ignore_errors=True)

    # -- writing -------------------------------------------------------------
    def stage(self) -> Path:
        """An empty folder beside the output, on the same file system; write the new output there."""
        if self._lock_fd is None:
            raise RuntimeError("OutputFolder.stage() outside its with-block")
        if self._stage is None:
            self._stage = self._sibling(f"staging-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            self._stage.mkdir()
            self._stage.chmod(0o755)
        return self._stage

    def commit(self) -> list[Path]:
        """Swap the staged output in; returns the paths written (under the output folder).

        Files of the old output that the manifest lists are dropped; every other
        file of the old folder is carried over unchanged.

        Raises:
            SaeAuditError: a file of the new output exists in the folder but was not
                written by sae-audit (nothing is changed; the new output is left in
                the staging folder, named in the message).
        """
        stage = self.stage()
        for k in self.keep:  # carried into the new output: it stays sae-audit's
            if (self.path / k).is_file() and not os.path.lexists(stage / k):
                (stage / k).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self.path / k, stage / k)
        written = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file() or p.is_symlink())
        written = [w for w in written if w != MANIFEST]
        if self.path.is_dir():
            owned = set(_manifest_files(self.path))
            clash = [w for w in written if (self.path / w).exists() and w not in owned]
            if clash:
                self.committed = True  # keep the staging folder: it holds the user's new output
                raise SaeAuditError(
                    f"{self.path / clash[0]} was not written by sae-audit and the new output would replace it; move "
                    f"it away and copy the new output from {stage}, or name another `{self.field}`", field=self.field)
        token = uuid.uuid4().hex
        manifest = {"format": "sae-audit output", "version": MANIFEST_VERSION, "token": token, "files": written}
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        _fsync_tree(stage)
        if not os.path.lexists(self.path):
            os.rename(stage, self.path)
        else:
            # Named for the commit: a run killed from here on is recovered by the next (see _recover).
            new = self._sibling(f"new-{token}")
            os.rename(stage, new)
            self._stage = new
            if _exchange(new, self.path):
                aside = new  # now holds the old output
            else:
                aside = self._sibling(f"old-{token}")
                os.rename(self.path, aside)
                os.rename(new, self.path)
            self._carry_foreign(aside, self.path)
            shutil.rmtree(aside, ignore_errors=True)
        self.committed = True
        return [self.path / w for w in written]

    @staticmethod
    def _carry_foreign(old: Path, new: Path) -> None:
        """Move every file of ``old`` that its manifest does not list (a user's) into ``new``."""
        owned = set(_manifest_files(old)) | {MANIFEST}
        for p in sorted(old.rglob("*")):
            if p.is_dir() and not p.is_symlink():
                continue
            rel = p.relative_to(old).as_posix()
            if rel in owned or os.path.lexists(new / rel):
                continue
            (new / rel).parent.mkdir(parents=True, exist_ok=True)
            os.rename(p, new / rel)


def _fsync_tree(root: Path) -> None:
    for p in [*root.rglob("*"), root]:
        with contextlib.suppress(OSError):
            if p.is_file():
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

"""Image sets from a folder tree (``ImageFolder`` layout, or any tree of images)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Literal

from PIL import Image

from sae_audit.data.base import (
    DEFAULT_MAX_PIXELS,
    MAX_IMAGE_FILE_BYTES,
    ImageSet,
    UnreadableImageError,
    check_max_pixels,
)
from sae_audit.errors import SaeAuditError
from sae_audit.safe_files import printable, read_bytes

__all__ = ["IMAGE_EXTENSIONS", "MAX_FOLDER_DEPTH", "ImageFolderSet"]

#: Deepest folder nesting walked below an image folder's root. Real image trees are a few levels deep;
#: a deeper one is refused with a message rather than walked (path lengths approach the system's limit).
MAX_FOLDER_DEPTH = 64

#: File extensions (lower case, with the dot) recognised as images; matching is
#: case-insensitive (``.JPG`` counts).
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


class ImageFolderSet(ImageSet):
    """Every image file anywhere under ``root``, in a fixed order.

    Files are found recursively (symlinked folders are not followed; a
    symlinked file is kept unless it points to a regular file that is already
    in the set, so no image is counted twice), keeping
    those whose extension is in :data:`IMAGE_EXTENSIONS` (case-insensitive).
    Hidden files and folders (names starting with ``.``, e.g. macOS ``._x.jpg``
    resource forks) are ignored. The order is the sort order of the relative
    paths' components, so it is the same on every machine.

    Labels (``labels="auto"``, the default): when every image lies inside a
    first-level subfolder, the set is labeled and the class of an image is the
    name of its first-level subfolder (``root/<class>/.../x.png``); classes are
    the sorted names of the first-level subfolders that contain at least one
    image. When any image lies directly in ``root``, the whole set is unlabeled
    (``classes is None``, every label ``-1``): a partial labeling would be
    silently misleading. ``labels="folders"`` requires the labeled layout
    (error otherwise); ``labels="none"`` always gives an unlabeled set.

    Files are not opened here: an unreadable file is found by :meth:`load`
    (see :func:`sae_audit.data.loader.iter_batches` for skipping). That
    includes a name with an image extension that is not a regular file (a
    FIFO, a device, a link to one): it is never opened, and is skipped and
    counted like a corrupt image (an error in strict mode). Files larger than
    :data:`~sae_audit.data.base.MAX_IMAGE_FILE_BYTES` and images over
    ``max_pixels`` (:data:`~sae_audit.data.base.DEFAULT_MAX_PIXELS`) are
    skipped the same way.

    Names are kept as the file system gives them, so every file can be opened,
    but ids, class names and the set's name are shown through
    :func:`sae_audit.safe_files.printable`: a name that is not UTF-8 (say,
    ``bad\xff.png``) or holds control characters gets backslash escapes, so
    it can be written to JSON and terminals. Subfolders that cannot be read
    are left out and listed in :attr:`unreadable_folders`.

    The tree is walked iteratively; folders nested more than
    :data:`MAX_FOLDER_DEPTH` levels below ``root`` are refused.

    Raises:
        SaeAuditError: ``root`` does not exist, is not a folder, cannot be
            read, contains no image files or folders nested too deeply; or
            ``labels="folders"`` and an image lies directly in ``root``;
            ``max_pixels`` is not a positive integer or None.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        name: str | None = None,
        labels: Literal["auto", "folders", "none"] = "auto",
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        if labels not in ("auto", "folders", "none"):
            raise SaeAuditError(f"labels must be 'auto', 'folders' or 'none', got {labels!r}")
        self.max_pixels = check_max_pixels(max_pixels)
        shown = printable(root)
        root_path = Path(root).expanduser()
        if not root_path.exists():
            raise SaeAuditError(f"image folder {shown!r} does not exist")
        if not root_path.is_dir():
            raise SaeAuditError(f"{shown!r} is not a folder; pass a folder of images")
        self.root = root_path.resolve()
        self.name = name or printable(self.root.name or str(self.root))
        self.source = printable(self.root)
        #: ``(relative folder, reason)`` for each subfolder that could not be listed.
        self.unreadable_folders: list[tuple[str, str]] = []

        rel_paths = self._walk(shown)
        if not rel_paths:
            exts = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
            raise SaeAuditError(
                f"no images found under {shown!r} (looked for files ending in {exts}, "
                "case-insensitive, in the folder and all its subfolders)"
            )
        rel_paths.sort()
        rel_paths = self._drop_duplicate_links(rel_paths)
        self._paths: list[tuple[str, ...]] = rel_paths

        in_root = [p for p in rel_paths if len(p) == 1]
        if labels == "folders" and in_root:
            raise SaeAuditError(
                f"{len(in_root)} image(s) lie directly in {str(root)!r} (e.g. {in_root[0][0]!r}); "
                "with labels='folders' every image must be inside a class subfolder"
            )
        if labels == "none" or in_root:
            self.classes = None
            self._labels: list[int] | None = None
        else:
            names = sorted({p[0] for p in rel_paths})
            index = {c: k for k, c in enumerate(names)}
            self.classes = [printable(c) for c in names]
            self._labels = [index[p[0]] for p in rel_paths]

    def _walk(self, shown: str) -> list[tuple[str, ...]]:
        """Relative paths (tuples of names) of the image-named entries under the root, without recursion."""
        rel_paths: list[tuple[str, ...]] = []
        stack: list[tuple[str, ...]] = [()]
        while stack:
            rel = stack.pop()
            if len(rel) > MAX_FOLDER_DEPTH:
                raise SaeAuditError(
                    f"image folder {shown!r} has folders nested more than {MAX_FOLDER_DEPTH} levels deep "
                    f"({printable('/'.join(rel[:4]))}/...); sae-audit does not walk that deep: move the images "
                    "into a shallower tree"
                )
            try:
                with os.scandir(self.root.joinpath(*rel)) as it:
                    entries = list(it)
            except OSError as exc:
                if not rel:
                    raise SaeAuditError(f"cannot read image folder {shown!r}: {exc.strerror or exc}") from None
                self.unreadable_folders.append(("/".join(printable(p) for p in rel), exc.strerror or str(exc)))
                continue
            for entry in entries:
                if _is_hidden(entry.name):
                    continue
                try:
                    is_dir = entry.is_dir()  # follows links, as os.walk classifies
                except OSError:
                    is_dir = False
                if is_dir:
                    if not entry.is_symlink():  # symlinked folders are not followed
                        stack.append(rel + (entry.name,))
                elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                    rel_paths.append(rel + (entry.name,))
        return rel_paths

    def _drop_duplicate_links(self, rel_paths: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
        """Drop symlinks whose target is a regular file already in the set.

        Symlinks to files outside the set are kept (a "symlink farm" dataset
        works), but an image linked into a second folder is counted once, under
        its real location (Debian's openclipart-png links about 1,200 of its
        files into a second category).
        """
        links = [p for p in rel_paths if os.path.islink(self.root.joinpath(*p))]
        if not links:
            return rel_paths
        link_set = set(links)
        # root is resolved and the walk does not enter symlinked folders, so a
        # regular file's path is already its real path.
        real = {str(self.root.joinpath(*p)) for p in rel_paths if p not in link_set}
        dup = {p for p in links if os.path.realpath(self.root.joinpath(*p)) in real}
        return [p for p in rel_paths if p not in dup]

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, i: int) -> Path:
        """Absolute path of image ``i``."""
        self._check_index(i)
        return self.root.joinpath(*self._paths[i])

    def item_file(self, i: int) -> Path:
        """The image's file (:meth:`path`): each image is a file of its own."""
        return self.path(i)

    def item_id(self, i: int) -> str:
        """The image's path relative to ``root``, with ``/`` separators, in printable form (see the class)."""
        self._check_index(i)
        return "/".join(printable(p) for p in self._paths[i])

    def label(self, i: int) -> int:
        self._check_index(i)
        return -1 if self._labels is None else self._labels[i]

    def _open(self, i: int) -> Image.Image:
        # Read the bytes first so the file handle is closed at once, even for
        # lazily decoded formats and when decoding fails. Only regular files are
        # opened (a FIFO would block, /dev/zero never end), and at most
        # MAX_IMAGE_FILE_BYTES are read.
        try:
            data = read_bytes(self.path(i), MAX_IMAGE_FILE_BYTES, "image file")
        except SaeAuditError as exc:
            raise UnreadableImageError(self.item_id(i), str(exc), self.name) from None
        return Image.open(io.BytesIO(data))

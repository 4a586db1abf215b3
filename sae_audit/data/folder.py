"""Image sets from a folder tree (``ImageFolder`` layout, or any tree of images)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Literal

from PIL import Image

from sae_audit.data.base import ImageSet
from sae_audit.errors import SaeAuditError

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderSet"]

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
    (see :func:`sae_audit.data.loader.iter_batches` for skipping).

    Raises:
        SaeAuditError: ``root`` does not exist, is not a folder, or contains no
            image files; or ``labels="folders"`` and an image lies directly in
            ``root``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        name: str | None = None,
        labels: Literal["auto", "folders", "none"] = "auto",
    ) -> None:
        if labels not in ("auto", "folders", "none"):
            raise SaeAuditError(f"labels must be 'auto', 'folders' or 'none', got {labels!r}")
        root_path = Path(root).expanduser()
        if not root_path.exists():
            raise SaeAuditError(f"image folder {str(root)!r} does not exist")
        if not root_path.is_dir():
            raise SaeAuditError(f"{str(root)!r} is not a folder; pass a folder of images")
        self.root = root_path.resolve()
        self.name = name or self.root.name or str(self.root)
        self.source = str(self.root)

        rel_paths: list[tuple[str, ...]] = []
        for dirpath, dirnames, filenames in os.walk(self.root, onerror=None):
            dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
            rel_dir = Path(dirpath).relative_to(self.root).parts
            for fn in filenames:
                if _is_hidden(fn):
                    continue
                if os.path.splitext(fn)[1].lower() in IMAGE_EXTENSIONS:
                    rel_paths.append(rel_dir + (fn,))
        if not rel_paths:
            exts = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
            raise SaeAuditError(
                f"no images found under {str(root)!r} (looked for files ending in {exts}, "
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
            self.classes = sorted({p[0] for p in rel_paths})
            index = {c: k for k, c in enumerate(self.classes)}
            self._labels = [index[p[0]] for p in rel_paths]

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
        # root is resolved and os.walk does not enter symlinked folders, so a
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

    def item_id(self, i: int) -> str:
        """The image's path relative to ``root``, with ``/`` separators."""
        self._check_index(i)
        return "/".join(self._paths[i])

    def label(self, i: int) -> int:
        self._check_index(i)
        return -1 if self._labels is None else self._labels[i]

    def _open(self, i: int) -> Image.Image:
        # Read the bytes first so the file handle is closed at once, even for
        # lazily decoded formats and when decoding fails.
        data = self.path(i).read_bytes()
        return Image.open(io.BytesIO(data))

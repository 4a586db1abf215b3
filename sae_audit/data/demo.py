"""Named demo image sets built from files that Debian and PyPI packages ship.

No network is needed: each set reads files installed by one package, and says
which one to install when they are missing.

- ``fashion-mnist:train`` (apt ``dataset-fashion-mnist``): 60,000 28x28 grey
  clothing images, 10 classes;
- ``fashion-mnist:test`` (apt ``dataset-fashion-mnist``): 10,000 of the same;
- ``digits`` (apt ``opencv-doc``): 5,000 20x20 handwritten digits from
  OpenCV's ``digits.png``, 500 per class;
- ``clipart`` (apt ``openclipart-png``): about 6,900 clip-art PNGs, class =
  top-level category folder;
- ``sklearn-digits`` (pip ``scikit-learn``): 1,797 8x8 handwritten digits
  from ``load_digits``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from sae_audit.data.base import DECODE_ERRORS, ImageSet
from sae_audit.data.folder import ImageFolderSet
from sae_audit.data.idx import IdxSet
from sae_audit.errors import SaeAuditError
from sae_audit.safe_files import gunzip_bytes, printable, read_bytes

# digits.png is 2000x1000 grey, about 700 KB; anything much larger is not it.
_DIGITS_MAX_BYTES = 64 << 20

__all__ = [
    "CLIPART_DIR",
    "DIGITS_PNG_CANDIDATES",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "DigitsSet",
    "SklearnDigitsSet",
    "clipart",
    "fashion_mnist",
]

#: Where Debian's ``dataset-fashion-mnist`` installs the IDX files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Fashion-MNIST class names, by label (Xiao et al. 2017, zalandoresearch/fashion-mnist).
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
#: Where Debian's ``openclipart-png`` installs its category folders.
CLIPART_DIR = Path("/usr/share/openclipart/png")
#: Where Debian's ``opencv-doc`` (or an OpenCV samples package) puts ``digits.png``.
DIGITS_PNG_CANDIDATES = (
    Path("/usr/share/doc/opencv-doc/examples/data/digits.png"),
    Path("/usr/share/doc/opencv-doc/examples/data/digits.png.gz"),
    Path("/usr/share/opencv4/samples/data/digits.png"),
    Path("/usr/share/opencv/samples/data/digits.png"),
)

DIGIT_CLASSES = [str(d) for d in range(10)]


def _missing(what: str, where: str, install: str) -> SaeAuditError:
    return SaeAuditError(f"{what} not found ({where}); install it with: {install}")


class DigitsSet(ImageSet):
    """OpenCV's ``digits.png``: 5,000 handwritten digits, 20x20 each.

    Layout (documented in OpenCV's ``samples/python/digits.py``): a 2000x1000
    grey image of 50 rows x 100 columns of 20x20 cells; rows ``5d .. 5d+4``
    hold the 500 samples of digit ``d``. Image ``i`` is the cell at row
    ``i // 100``, column ``i % 100`` and its label is ``i // 500``.

    ``load(i)`` returns a 20x20 ``RGB`` image (white digit on black).

    Raises:
        SaeAuditError: ``digits.png`` is not installed (apt ``opencv-doc``) or
            is not 2000x1000.
    """

    CELL = 20
    ROWS, COLS = 50, 100

    def __init__(self, path: str | Path | None = None) -> None:
        if path is None:
            found = next((p for p in DIGITS_PNG_CANDIDATES if p.is_file()), None)
            if found is None:
                raise _missing(
                    "OpenCV's digits.png",
                    f"looked at {', '.join(str(p) for p in DIGITS_PNG_CANDIDATES)}",
                    "apt-get install opencv-doc",
                )
            path = found
        path = Path(path)
        data = read_bytes(path, _DIGITS_MAX_BYTES, "digits image")
        if path.suffix == ".gz":
            data = gunzip_bytes(data, _DIGITS_MAX_BYTES, f"digits image {printable(path)!r}")
        want = (self.COLS * self.CELL, self.ROWS * self.CELL)
        try:
            with Image.open(io.BytesIO(data)) as im:
                if im.size != want:  # checked on the header, before decoding
                    raise SaeAuditError(
                        f"{printable(path)!r} is {im.size[0]}x{im.size[1]}, expected OpenCV's "
                        "2000x1000 digits.png; reinstall opencv-doc"
                    )
                grid = np.asarray(im.convert("L"))
        except DECODE_ERRORS as exc:
            raise SaeAuditError(f"{printable(path)!r} is not a readable PNG ({exc}); reinstall opencv-doc") from None
        # [50, 20, 100, 20] -> [50, 100, 20, 20] -> [5000, 20, 20]
        c = self.CELL
        self._cells = np.ascontiguousarray(
            grid.reshape(self.ROWS, c, self.COLS, c).transpose(0, 2, 1, 3).reshape(-1, c, c)
        )
        self.name = "digits"
        self.source = f"{path} (apt opencv-doc)"
        self.classes = list(DIGIT_CLASSES)
        self.path = path

    def content_files(self) -> list[Path]:
        """OpenCV's ``digits.png``: its bytes identify the set."""
        return [self.path]

    def __len__(self) -> int:
        return int(self._cells.shape[0])

    def label(self, i: int) -> int:
        self._check_index(i)
        return int(i) // (5 * self.COLS)

    def item_id(self, i: int) -> str:
        self._check_index(i)
        return f"digits.png#row{int(i) // self.COLS}col{int(i) % self.COLS}"

    def _open(self, i: int) -> Image.Image:
        return Image.fromarray(self._cells[i], "L")


class SklearnDigitsSet(ImageSet):
    """scikit-learn's ``load_digits``: 1,797 8x8 digits, 10 classes.

    Pixel values 0..16 are scaled to 0..255 (``round(v * 255 / 16)``);
    ``load(i)`` returns an 8x8 ``RGB`` image (white digit on black, as in
    the source data's convention of ink = high).

    Raises:
        SaeAuditError: scikit-learn is not installed (pip ``scikit-learn``).
    """

    def __init__(self) -> None:
        try:
            from sklearn.datasets import load_digits
        except ImportError as exc:
            raise _missing(
                "scikit-learn (for sklearn-digits)", "cannot import sklearn", "pip install scikit-learn"
            ) from exc
        bunch = load_digits()
        imgs = np.asarray(bunch.images, dtype=np.float64)
        self._images = np.clip(np.rint(imgs * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        self._labels = np.asarray(bunch.target, dtype=np.int64)
        self.name = "sklearn-digits"
        self.source = "sklearn.datasets.load_digits (pip scikit-learn)"
        self.classes = list(DIGIT_CLASSES)

    def __len__(self) -> int:
        return int(self._images.shape[0])

    def label(self, i: int) -> int:
        self._check_index(i)
        return int(self._labels[i])

    def item_id(self, i: int) -> str:
        self._check_index(i)
        return f"sklearn-digits#{i}"

    def _open(self, i: int) -> Image.Image:
        return Image.fromarray(self._images[i], "L")


def _find(stem: Path) -> Path:
    """``stem.gz`` or ``stem`` (raw), whichever exists."""
    for p in (stem.with_name(stem.name + ".gz"), stem):
        if p.is_file():
            return p
    raise _missing("Fashion-MNIST", f"no {stem}.gz", "apt-get install dataset-fashion-mnist")


def fashion_mnist(split: str) -> ImageSet:
    """Fashion-MNIST ``train`` or ``test`` (apt ``dataset-fashion-mnist``).

    Raises:
        SaeAuditError: the package is not installed.
    """
    prefix = {"train": "train", "test": "t10k"}[split]
    images = _find(FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte")
    labels = _find(FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte")
    ds = IdxSet(images, labels, FASHION_MNIST_CLASSES, name=f"fashion-mnist:{split}")
    ds.source = f"{images} (apt dataset-fashion-mnist)"
    return ds


def clipart() -> ImageSet:
    """The Open Clip Art Library PNGs (apt ``openclipart-png``); class = top-level category.

    Raises:
        SaeAuditError: the package is not installed.
    """
    if not CLIPART_DIR.is_dir():
        raise _missing("Open Clip Art PNGs", f"no folder {CLIPART_DIR}", "apt-get install openclipart-png")
    ds = ImageFolderSet(CLIPART_DIR, name="clipart")
    ds.source = f"{CLIPART_DIR} (apt openclipart-png)"
    return ds

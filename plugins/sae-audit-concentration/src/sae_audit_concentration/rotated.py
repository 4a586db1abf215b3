"""The ``rotate:DEG:SET`` image-set family: every image of any set, rotated by DEG degrees.

A simple, controllable distribution shift: the same images, seen at another
orientation. Multiples of 90 degrees are exact (Pillow's ``transpose``: no
interpolation, a non-square image swaps width and height); other angles use
bilinear interpolation about the centre, keep the size and fill the corners
black.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from sae_audit.data import ImageSet
from sae_audit.errors import SaeAuditError

_EXACT = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


def rotate(image: Image.Image, degrees: int) -> Image.Image:
    """``image`` (RGB) rotated counter-clockwise by ``degrees`` (an int; negative turns clockwise)."""
    turn = degrees % 360
    if turn == 0:
        return image.copy()
    if turn in _EXACT:
        return image.transpose(_EXACT[turn])
    return image.rotate(degrees, resample=Image.Resampling.BILINEAR, expand=False, fillcolor=(0, 0, 0))


class RotatedSet(ImageSet):
    """Every image of ``base`` rotated by ``degrees`` (lazy; labels and classes are the base's).

    Provenance follows the base (:class:`sae_audit.data.ImageSet`): ``base`` is
    set, and image ``i`` is the base's image ``i`` (``item_file``). The name is
    built from the base's short name: ``rotate:90:digits``.

    Raises:
        SaeAuditError: ``degrees`` is not an integer from -360 to 360.
    """

    def __init__(self, base: ImageSet, degrees: int):
        if isinstance(degrees, bool) or not isinstance(degrees, int) or not -360 <= degrees <= 360:
            raise SaeAuditError(f"rotation must be a whole number of degrees from -360 to 360, got {degrees!r}")
        self.base, self.degrees = base, degrees
        self.name = f"rotate:{degrees}:{base.name}"
        self.source = f"{base.source} rotated by {degrees} degrees (sae-audit-concentration)"
        self.classes = base.classes

    def __len__(self) -> int:
        return len(self.base)

    def _open(self, i: int) -> Image.Image:
        return rotate(self.base.load(i), self.degrees)

    def label(self, i: int) -> int:
        return self.base.label(i)

    def item_id(self, i: int) -> str:
        return f"{self.base.item_id(i)} [rotated {self.degrees}]"

    def item_file(self, i: int):
        return self.base.item_file(i)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "rotation": {"degrees": self.degrees, "base": self.base.name}}


def open_rotated(argument: str) -> RotatedSet:
    """The factory of the ``rotate`` family: ``argument`` is what follows ``rotate:`` (``"90:digits"``).

    Raises:
        SaeAuditError: the argument is not ``DEG:SET``, or the base set cannot be opened.
    """
    from sae_audit.data import open_image_set

    deg, sep, base = argument.partition(":")
    if not sep or not base:
        raise SaeAuditError(f"rotated image set 'rotate:{argument}' must be written rotate:DEG:SET, e.g. "
                            "rotate:90:fashion-mnist:test")
    try:
        degrees = int(deg)
    except ValueError:
        raise SaeAuditError(f"rotation must be a whole number of degrees from -360 to 360, got {deg!r}") from None
    return RotatedSet(open_image_set(base), degrees)

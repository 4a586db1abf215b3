"""Image sets built to hurt: pixel bombs, FIFOs and devices, undecodable names, deep trees.

Real files in tmp_path (PNGs of 169 megapixels written row by row, so the test
never holds them decoded), real FIFOs and links; whatever could hang or
allocate runs in a child process with a timeout and a memory ceiling
(tests/isolated.py).
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sae_audit.data import ImageFolderSet, UnreadableImageError, iter_batches, open_image_set
from sae_audit.data.base import DEFAULT_MAX_PIXELS
from sae_audit.data.folder import MAX_FOLDER_DEPTH
from sae_audit.errors import SaeAuditError
from tests.isolated import run_isolated


def grey_png(path: Path, width: int, height: int) -> None:
    """A black 8-bit grey PNG of any size, compressed one row at a time (memory: one row)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + pixels
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def to_tensor(images):
    return torch.stack([torch.from_numpy(np.asarray(im.resize((4, 4)), dtype=np.float32)) for im in images])


# Heavy imports run before the child's memory ceiling is set.
IMPORTS = """
import torch
from sae_audit.data import IdxSet, iter_batches, open_image_set
from sae_audit.data.demo import DigitsSet
from sae_audit.errors import SaeAuditError
"""
ITERATE = """
    import warnings
    warnings.simplefilter("ignore")
    s = open_image_set({root!r})
    it = iter_batches(s, lambda ims: torch.zeros(len(ims), 1), batch_size=2, num_workers=4)
    n = sum(len(b) for b in it)
    report(n_ok=n, skipped=it.skipped)
"""


# --------------------------------------------------------------------------- A2: pixel bombs
def test_pngs_just_under_pillows_limit_are_skipped_not_decoded(tmp_path: Path) -> None:
    root = tmp_path / "bombs"
    root.mkdir()
    for i in range(4):  # 13000 x 13000 = 169 Mpx each (about 160 KB on disk), below Pillow's bomb error
        grey_png(root / f"bomb{i}.png", 13_000, 13_000)
    Image.new("RGB", (64, 48), (200, 10, 10)).save(root / "fine.png")
    assert os.path.getsize(root / "bomb0.png") < 200_000
    out = run_isolated(ITERATE.format(root=str(root)), imports=IMPORTS, timeout=120)
    assert out["n_ok"] == 1 and len(out["skipped"]) == 4
    for item, reason in out["skipped"]:
        assert item.startswith("bomb") and "13000x13000 = 169,000,000 pixels" in reason and "max_pixels" in reason
    assert out["peak_mb"] < 300, out  # one decoded bomb alone would be 169 MB, four in threads 2 GB and more


def test_jpegs_over_the_cap_are_decoded_reduced_and_other_formats_skipped(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.jpg", quality=90)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    s = ImageFolderSet(tmp_path, max_pixels=40_000)
    assert s.load(0).size == (160, 120)  # 1/2 scale is 76,800 px, over the cap; 1/4 fits (libjpeg DCT scaling)
    with pytest.raises(UnreadableImageError, match=r"photo\.png.*640x480 = 307,200 pixels, over the 40,000-pixel"):
        s.load(1)
    it = iter_batches(s, to_tensor, batch_size=4)
    assert sum(len(b) for b in it) == 1 and it.skipped[0][0] == "photo.png"
    assert ImageFolderSet(tmp_path).load(0).size == (640, 480)  # under the default cap nothing changes
    assert ImageFolderSet(tmp_path, max_pixels=None).load(1).size == (640, 480)
    with pytest.raises(SaeAuditError, match="max_pixels must be a positive integer"):
        open_image_set(str(tmp_path), max_pixels=0)
    assert DEFAULT_MAX_PIXELS == 4096 * 4096


def test_open_image_set_passes_max_pixels_to_every_kind_of_set(tmp_path: Path) -> None:
    Image.new("L", (300, 200)).save(tmp_path / "a.png")
    s = open_image_set(str(tmp_path), max_images=1, max_pixels=1000)
    with pytest.raises(UnreadableImageError, match="over the 1,000-pixel decoding cap"):
        s.load(0)
    assert open_image_set("sklearn-digits", max_pixels=64).load(0).size == (8, 8)


# --------------------------------------------------------------------------- A3: FIFOs and devices in a folder
def test_a_fifo_or_device_in_a_folder_is_skipped_and_counted_never_read(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    (root / "cats").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "cats" / "ok.png")
    os.mkfifo(root / "cats" / "pipe.png")
    os.symlink("/dev/zero", root / "cats" / "zero.jpg")
    out = run_isolated(ITERATE.format(root=str(root)), imports=IMPORTS, timeout=60)
    assert out["n_ok"] == 1
    reasons = dict(out["skipped"])
    assert "is a FIFO (named pipe), not a regular file" in reasons["cats/pipe.png"]
    assert "is a character device, not a regular file" in reasons["cats/zero.jpg"]
    strict = run_isolated(f"""
        try:
            list(iter_batches(open_image_set({str(root)!r}), lambda ims: torch.zeros(len(ims), 1), 4, strict=True))
            report(msg=None)
        except SaeAuditError as exc:
            report(msg=str(exc))
    """, imports=IMPORTS, timeout=60)
    assert "cannot read image 'cats/pipe.png'" in strict["msg"] and "FIFO" in strict["msg"]


def test_a_fifo_given_as_an_image_set_or_idx_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "train-images-idx3-ubyte")
    os.mkfifo(tmp_path / "pipe")
    out = run_isolated(f"""
        msgs = []
        for make in (lambda: open_image_set({str(tmp_path / "pipe")!r}),
                     lambda: IdxSet({str(tmp_path / "train-images-idx3-ubyte")!r}),
                     lambda: DigitsSet({str(tmp_path / "pipe")!r})):
            try:
                make()
                msgs.append("opened")
            except SaeAuditError as exc:
                msgs.append(str(exc))
        report(msgs=msgs)
    """, imports=IMPORTS, timeout=60)
    for msg in out["msgs"]:
        assert "is a FIFO (named pipe), not a regular file" in msg, msg


# --------------------------------------------------------------------------- names and trees
def test_undecodable_file_and_folder_names_get_printable_ids(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path / "imgs")
    os.makedirs(root + b"/caf\xe9")  # Latin-1 folder name: not UTF-8
    Image.new("RGB", (8, 8), (1, 2, 3)).save(os.fsdecode(root + b"/caf\xe9/bad\xff.png"))
    Image.new("RGB", (8, 8)).save(os.fsdecode(root + b"/caf\xe9/new\nline.png"))
    s = open_image_set(os.fsdecode(root))
    assert [s.item_id(i) for i in range(len(s))] == ["caf\\xe9/bad\\xff.png", "caf\\xe9/new\\nline.png"]
    assert s.classes == ["caf\\xe9"]
    assert np.asarray(s.load(0))[0, 0].tolist() == [1, 2, 3]  # the file itself is still read
    it = iter_batches(s, to_tensor, 2)
    assert sum(len(b) for b in it) == 2
    json.dumps({"ids": [s.item_id(i) for i in range(len(s))], "set": s.describe()},
               ensure_ascii=False).encode("utf-8")  # what results files do: no lone surrogates


def nested(root: Path, depth: int) -> Path:
    """``root/d/d/.../d`` (``depth`` levels) with one image at the bottom; made without recursion."""
    path = str(root)
    os.mkdir(path)
    for _ in range(depth):
        path += "/d"
        os.mkdir(path)
    Image.new("RGB", (8, 8)).save(path + "/x.png")
    return root


def remove_nested(root: Path, depth: int) -> None:
    """Remove what :func:`nested` made, bottom-up (pytest's own clean-up recurses and would overflow)."""
    path = str(root) + "/d" * depth
    os.unlink(path + "/x.png")
    for _ in range(depth + 1):
        os.rmdir(path)
        path = os.path.dirname(path)


def test_a_tree_1500_levels_deep_is_refused_with_a_message(tmp_path: Path) -> None:
    deep = nested(tmp_path / "deep", 1500)
    try:
        with pytest.raises(SaeAuditError, match=f"nested more than {MAX_FOLDER_DEPTH} levels deep"):
            ImageFolderSet(deep)
    finally:
        remove_nested(deep, 1500)
    assert len(ImageFolderSet(nested(tmp_path / "ok", MAX_FOLDER_DEPTH))) == 1

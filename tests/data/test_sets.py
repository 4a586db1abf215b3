"""Tests for sae_audit.data: real files written with Pillow / numpy into tmp_path."""

from __future__ import annotations

import gzip
import io
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sae_audit.data import (
    IdxSet,
    ImageFolderSet,
    Subset,
    UnreadableImageError,
    find_idx_labels,
    iter_batches,
    list_named_sets,
    open_image_set,
    subsample,
    to_rgb,
)
from sae_audit.data.base import ImageSet
from sae_audit.errors import SaeAuditError
from sae_audit.plugin_manager import PluginManager, use_plugin_manager

with use_plugin_manager(PluginManager(load_entry_points=False)):
    NAMED_SETS = list_named_sets()  # the built-in named sets

# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """A minimal preprocess: resize to 8x8, uint8 -> float [B, 3, 8, 8]."""
    arrs = [np.array(im.resize((8, 8)), dtype=np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)


def assert_rgb8(im: Image.Image, size: tuple[int, int]) -> np.ndarray:
    assert isinstance(im, Image.Image)
    assert im.mode == "RGB"
    assert im.size == size
    a = np.asarray(im)
    assert a.dtype == np.uint8 and a.shape == (size[1], size[0], 3)
    return a


def write_idx(path: Path, array: np.ndarray, *, gz: bool) -> None:
    """Write an unsigned-byte IDX file independently of the reader."""
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    data = header + array.tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


# --------------------------------------------------------------------------- #
# to_rgb: every mode
# --------------------------------------------------------------------------- #


def test_to_rgb_grey_and_bilevel() -> None:
    g = Image.fromarray(np.array([[0, 128, 255]], dtype=np.uint8), "L")
    a = assert_rgb8(to_rgb(g), (3, 1))
    assert a[0, :, 0].tolist() == [0, 128, 255] and (a[..., 0] == a[..., 2]).all()
    b = Image.new("1", (2, 1))
    b.putpixel((1, 0), 1)
    assert np.asarray(to_rgb(b))[0, :, 1].tolist() == [0, 255]


def test_to_rgb_16bit_and_int_and_float() -> None:
    a16 = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    im16 = Image.fromarray(a16)
    assert im16.mode.startswith("I;16")
    assert np.asarray(to_rgb(im16))[0, :, 0].tolist() == [0, 100, 255]
    imI = Image.fromarray(a16.astype(np.int32), "I")
    assert np.asarray(to_rgb(imI))[0, :, 0].tolist() == [0, 100, 255]
    f01 = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    assert np.asarray(to_rgb(f01))[0, :, 0].tolist() == [0, 128, 255]
    f255 = Image.fromarray(np.array([[0.0, 17.0, 300.0]], dtype=np.float32), "F")
    assert np.asarray(to_rgb(f255))[0, :, 0].tolist() == [0, 17, 255]


def test_to_rgb_alpha_composited_on_white() -> None:
    rgba = Image.new("RGBA", (2, 1), (10, 200, 30, 0))
    rgba.putpixel((1, 0), (10, 200, 30, 255))
    a = np.asarray(to_rgb(rgba))
    assert a[0, 0].tolist() == [255, 255, 255]  # fully transparent -> white
    assert a[0, 1].tolist() == [10, 200, 30]  # opaque -> unchanged
    half = Image.new("RGBA", (1, 1), (0, 0, 0, 128))
    v = np.asarray(to_rgb(half))[0, 0, 0]
    assert abs(int(v) - round(255 * (1 - 128 / 255))) <= 1
    la = Image.new("LA", (1, 1), (0, 0))
    assert np.asarray(to_rgb(la))[0, 0].tolist() == [255, 255, 255]


def test_to_rgb_palette_with_and_without_transparency() -> None:
    p = Image.new("P", (2, 1))
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p.putpixel((1, 0), 1)
    assert np.asarray(to_rgb(p))[0].tolist() == [[255, 0, 0], [0, 0, 255]]
    p.info["transparency"] = 0
    assert np.asarray(to_rgb(p))[0].tolist() == [[255, 255, 255], [0, 0, 255]]


def test_to_rgb_cmyk() -> None:
    c = Image.new("CMYK", (1, 1), (0, 255, 255, 0))  # red
    assert np.asarray(to_rgb(c))[0, 0].tolist() == [255, 0, 0]


# --------------------------------------------------------------------------- #
# folders: every mode and format on disk
# --------------------------------------------------------------------------- #


def _grad(w: int = 12, h: int = 10) -> np.ndarray:
    return (np.arange(w * h, dtype=np.uint32).reshape(h, w) * 2 % 256).astype(np.uint8)


def write_zoo(root: Path) -> dict[str, tuple[str, tuple[int, int]]]:
    """Write one image per (mode, format) into class folders; return id -> (class, size)."""
    made: dict[str, tuple[str, tuple[int, int]]] = {}

    def save(rel: str, im: Image.Image, **kw) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        im.save(path, **kw)
        made[rel] = (rel.split("/")[0], im.size)

    g = _grad()
    rgb = np.stack([g, 255 - g, g // 2], axis=-1)
    save("grey/l.png", Image.fromarray(g, "L"))
    save("grey/l16.png", Image.fromarray(g.astype(np.uint16) * 257))
    save("grey/bilevel.png", Image.fromarray(g > 100).convert("1"))
    save("grey/bilevel.bmp", Image.fromarray(g > 100).convert("1"))
    save("grey/deep/nested/l.jpeg", Image.fromarray(g, "L"))
    save("colour/rgb.jpg", Image.fromarray(rgb, "RGB"), quality=95)
    save("colour/UPPER.JPG", Image.fromarray(rgb, "RGB"))
    save("colour/rgb.webp", Image.fromarray(rgb, "RGB"), lossless=True)
    save("colour/rgb.bmp", Image.fromarray(rgb, "RGB"))
    save("colour/cmyk.jpg", Image.fromarray(rgb, "RGB").convert("CMYK"))
    save("alpha/rgba.png", Image.fromarray(np.dstack([rgb, g]), "RGBA"))
    save("alpha/la.png", Image.fromarray(np.dstack([g, 255 - g]), "LA"))
    save("alpha/rgba.webp", Image.fromarray(np.dstack([rgb, g]), "RGBA"), lossless=True)
    pal = Image.fromarray(rgb, "RGB").quantize(16)
    save("palette/p.png", pal)
    save("palette/p.gif", pal)
    pt = pal.copy()
    pt.info["transparency"] = 0
    save("palette/p_transparent.png", pt, transparency=0)
    save("palette/p_transparent.gif", pt, transparency=0)
    red = Image.new("RGB", (9, 7), (255, 0, 0))
    blue = Image.new("RGB", (9, 7), (0, 0, 255))
    save("anim/anim.gif", red, save_all=True, append_images=[blue, blue], duration=50, loop=0)
    return made


def test_folder_every_mode_and_format(tmp_path: Path) -> None:
    made = write_zoo(tmp_path)
    (tmp_path / "colour" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    Image.new("RGB", (3, 3)).save(tmp_path / ".hidden" / "x.png")
    ds = ImageFolderSet(tmp_path)
    assert len(ds) == len(made)
    assert ds.classes == sorted({c for c, _ in made.values()})
    assert sorted(ds.item_id(i) for i in range(len(ds))) == sorted(made)
    for i in range(len(ds)):
        cls, size = made[ds.item_id(i)]
        assert ds.classes[ds.label(i)] == cls
        assert_rgb8(ds.load(i), size)
    by_id = {ds.item_id(i): i for i in range(len(ds))}
    # animated GIF: first frame (red), not the second (blue)
    assert np.asarray(ds.load(by_id["anim/anim.gif"])).reshape(-1, 3).mean(0).round().tolist() == [
        255.0,
        0.0,
        0.0,
    ]
    # 16-bit PNG scaled back to the 8-bit gradient it was made from
    assert (np.asarray(ds.load(by_id["grey/l16.png"]))[..., 0] == _grad()).all()
    # transparent palette index 0 became white
    pt = Image.open(tmp_path / "palette" / "p_transparent.png")
    mask = np.asarray(pt) == 0
    assert mask.any()
    assert (np.asarray(ds.load(by_id["palette/p_transparent.png"]))[mask] == 255).all()
    # lossless webp of RGB round-trips exactly
    g = _grad()
    assert (np.asarray(ds.load(by_id["colour/rgb.webp"]))[..., 0] == g).all()
    d = ds.describe()
    assert d["size"] == len(made) and d["classes"] == ds.classes and d["name"] == tmp_path.name


def test_folder_order_is_sorted_and_stable(tmp_path: Path) -> None:
    for rel in ["b/2.png", "a/z.png", "a/10.png", "b/1.png", "a/sub/0.png"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (2, 2)).save(tmp_path / rel)
    ds = ImageFolderSet(tmp_path)
    ids = [ds.item_id(i) for i in range(len(ds))]
    assert ids == ["a/10.png", "a/sub/0.png", "a/z.png", "b/1.png", "b/2.png"]
    assert [ds.label(i) for i in range(len(ds))] == [0, 0, 0, 1, 1]
    assert ids == [ImageFolderSet(tmp_path).item_id(i) for i in range(len(ds))]


def test_folder_images_in_root_make_it_unlabeled(tmp_path: Path) -> None:
    Image.new("L", (2, 2)).save(tmp_path / "top.png")
    (tmp_path / "cls").mkdir()
    Image.new("L", (2, 2)).save(tmp_path / "cls" / "x.png")
    ds = ImageFolderSet(tmp_path)
    assert ds.classes is None and [ds.label(i) for i in range(2)] == [-1, -1]
    with pytest.raises(SaeAuditError, match="directly in"):
        ImageFolderSet(tmp_path, labels="folders")
    assert ImageFolderSet(tmp_path / "cls").classes is None  # flat folder: unlabeled
    assert ImageFolderSet(tmp_path, labels="none").classes is None


def test_folder_symlink_duplicates_counted_once(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.new("L", (2, 2)).save(tmp_path / "a" / "x.png")
    (tmp_path / "b" / "x.png").symlink_to(tmp_path / "a" / "x.png")
    outside = tmp_path.parent / f"{tmp_path.name}_outside.png"
    Image.new("L", (2, 2)).save(outside)
    (tmp_path / "b" / "ext.png").symlink_to(outside)
    ds = ImageFolderSet(tmp_path)
    assert [ds.item_id(i) for i in range(len(ds))] == ["a/x.png", "b/ext.png"]


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(SaeAuditError, match="does not exist"):
        ImageFolderSet(tmp_path / "missing")
    f = tmp_path / "file.png"
    Image.new("L", (2, 2)).save(f)
    with pytest.raises(SaeAuditError, match="not a folder"):
        ImageFolderSet(f)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SaeAuditError, match="no images found"):
        ImageFolderSet(tmp_path / "empty")
    (tmp_path / "noimg" / "sub").mkdir(parents=True)
    (tmp_path / "noimg" / "a.txt").write_text("x")
    (tmp_path / "noimg" / "sub" / "b.tiff").write_bytes(b"x")
    with pytest.raises(SaeAuditError, match="no images found"):
        ImageFolderSet(tmp_path / "noimg")


# --------------------------------------------------------------------------- #
# unreadable images: skipped and recorded, strict -> error
# --------------------------------------------------------------------------- #


def write_broken_folder(root: Path) -> list[str]:
    """Three good images and three bad ones; returns the bad ids."""
    (root / "ok").mkdir(parents=True)
    (root / "bad").mkdir()
    for k in range(3):
        Image.new("RGB", (16, 16), (k * 80, 0, 0)).save(root / "ok" / f"{k}.png")
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    noise.save(buf, "PNG")
    (root / "bad" / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    buf = io.BytesIO()
    noise.save(buf, "JPEG")
    (root / "bad" / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "bad" / "text.jpg").write_text("this is not a JPEG")
    return ["bad/text.jpg", "bad/truncated.jpg", "bad/truncated.png"]


def test_unreadable_images_are_skipped_and_recorded(tmp_path: Path) -> None:
    bad = write_broken_folder(tmp_path)
    ds = ImageFolderSet(tmp_path)
    for i in range(len(ds)):
        if ds.item_id(i) in bad:
            with pytest.raises(UnreadableImageError) as info:
                ds.load(i)
            assert ds.item_id(i) in str(info.value)
    it = iter_batches(ds, to_tensor, batch_size=2)
    batches = list(it)
    assert [len(b) for b in batches] == [2, 1]
    assert sorted(item for item, _ in it.skipped) == bad
    assert all(reason for _, reason in it.skipped)
    assert it.n_seen == 6 and it.n_ok == 3
    idx = torch.cat([b.indices for b in batches]).tolist()
    assert [ds.item_id(i) for i in idx] == ["ok/0.png", "ok/1.png", "ok/2.png"]
    assert batches[0].pixel_values.shape == (2, 3, 8, 8)
    assert batches[0].labels.dtype == torch.long and batches[0].indices.dtype == torch.long
    assert set(torch.cat([b.labels for b in batches]).tolist()) == {ds.classes.index("ok")}
    # threaded decoding gives the same result in the same order
    it2 = iter_batches(ds, to_tensor, batch_size=2, num_workers=2)
    assert torch.cat([b.indices for b in it2]).tolist() == idx
    assert sorted(it2.skipped) == sorted(it.skipped)
    # and so does decoding in torch DataLoader worker processes: same batches, same pixels, same skips
    it3 = iter_batches(ds, to_tensor, batch_size=2, num_workers=2, workers="processes")
    batches3 = list(it3)
    assert [b.indices.tolist() for b in batches3] == [b.indices.tolist() for b in batches]
    assert all(torch.equal(a.pixel_values, b.pixel_values) for a, b in zip(batches3, batches))
    assert it3.skipped == it.skipped and (it3.n_seen, it3.n_ok) == (6, 3)
    with pytest.raises(UnreadableImageError):
        list(iter_batches(ds, to_tensor, batch_size=2, strict=True, num_workers=1, workers="processes"))


def test_strict_raises_naming_the_file(tmp_path: Path) -> None:
    write_broken_folder(tmp_path)
    ds = ImageFolderSet(tmp_path)
    with pytest.raises(SaeAuditError, match=r"bad/text\.jpg"):
        list(iter_batches(ds, to_tensor, batch_size=4, strict=True))


def test_all_unreadable_and_empty_sets(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"nope")
    it = iter_batches(ImageFolderSet(tmp_path), to_tensor, batch_size=2)
    with pytest.raises(SaeAuditError, match="none of the 1 images"):
        list(it)
    assert it.skipped[0][0] == "x.png"

    class Empty(ImageSet):
        name = "nothing"

        def __len__(self) -> int:
            return 0

        def _open(self, i: int) -> Image.Image:  # pragma: no cover
            raise AssertionError

    with pytest.raises(SaeAuditError, match="image set 'nothing' is empty"):
        iter_batches(Empty(), to_tensor, batch_size=2)


def test_batches_full_and_labels_and_progress(tmp_path: Path, capsys) -> None:
    images = np.arange(7 * 4 * 4, dtype=np.uint8).reshape(7, 4, 4)
    labels = np.array([3, 1, 4, 1, 5, 9, 2], dtype=np.uint8)
    write_idx(tmp_path / "i.idx", images, gz=False)
    write_idx(tmp_path / "l.idx", labels, gz=False)
    ds = IdxSet(tmp_path / "i.idx", tmp_path / "l.idx")
    it = iter_batches(ds, to_tensor, batch_size=3, progress="test")
    got = list(it)
    assert [len(b) for b in got] == [3, 3, 1]
    assert torch.cat([b.labels for b in got]).tolist() == labels.tolist()
    assert torch.cat([b.indices for b in got]).tolist() == list(range(7))
    assert it.skipped == [] and it.n_seen == 7
    with pytest.raises(TypeError, match="first dimension"):
        list(iter_batches(ds, lambda ims: torch.zeros(1), batch_size=3))


# --------------------------------------------------------------------------- #
# IDX
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 6, 7), dtype=np.uint8)
    labels = np.array([0, 2, 1, 2, 0], dtype=np.uint8)
    sfx = ".gz" if gz else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{sfx}", images, gz=gz)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{sfx}", labels, gz=gz)
    ds = IdxSet(tmp_path / f"train-images-idx3-ubyte{sfx}", tmp_path / f"train-labels-idx1-ubyte{sfx}", ["a", "b", "c"])
    assert len(ds) == 5 and ds.classes == ["a", "b", "c"]
    for i in range(5):
        a = assert_rgb8(ds.load(i), (7, 6))
        assert (a[..., 0] == images[i]).all() and (a[..., 2] == images[i]).all()
        assert ds.label(i) == labels[i]
    # open_image_set auto-detects the labels file next to it
    ds2 = open_image_set(str(tmp_path / f"train-images-idx3-ubyte{sfx}"))
    assert [ds2.label(i) for i in range(5)] == labels.tolist()
    assert ds2.classes is None


def test_idx_colour_and_unlabeled(tmp_path: Path) -> None:
    images = np.random.default_rng(2).integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
    write_idx(tmp_path / "c.idx", images, gz=True)
    ds = IdxSet(tmp_path / "c.idx")
    assert (np.asarray(ds.load(2)) == images[2]).all() and ds.label(2) == -1


def test_idx_labels_autodetect_mixed_compression(tmp_path: Path) -> None:
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((2, 2, 2)), gz=True)
    assert find_idx_labels(tmp_path / "t10k-images-idx3-ubyte.gz") is None
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([1, 0]), gz=False)
    assert find_idx_labels(tmp_path / "t10k-images-idx3-ubyte.gz") == tmp_path / "t10k-labels-idx1-ubyte"
    assert find_idx_labels(tmp_path / "whatever.bin") is None


def test_idx_corrupt_files(tmp_path: Path) -> None:
    images = np.zeros((4, 3, 3), dtype=np.uint8)
    write_idx(tmp_path / "ok", images, gz=False)
    raw = (tmp_path / "ok").read_bytes()
    (tmp_path / "short").write_bytes(raw[:-5])
    with pytest.raises(SaeAuditError, match="truncated"):
        IdxSet(tmp_path / "short")
    (tmp_path / "long").write_bytes(raw + b"\0")
    with pytest.raises(SaeAuditError, match="longer"):
        IdxSet(tmp_path / "long")
    gzb = gzip.compress(raw)
    (tmp_path / "short.gz").write_bytes(gzb[: len(gzb) // 2])
    with pytest.raises(SaeAuditError, match="gzip"):
        IdxSet(tmp_path / "short.gz")
    (tmp_path / "shortdata.gz").write_bytes(gzip.compress(raw[:-1]))
    with pytest.raises(SaeAuditError, match="truncated"):
        IdxSet(tmp_path / "shortdata.gz")
    (tmp_path / "notidx").write_bytes(b"\x89PNG\r\n\x1a\n1234")
    with pytest.raises(SaeAuditError, match="not an IDX"):
        IdxSet(tmp_path / "notidx")
    write_idx(tmp_path / "labels", np.zeros(4), gz=False)
    with pytest.raises(SaeAuditError, match="dimensions"):
        IdxSet(tmp_path / "labels")
    write_idx(tmp_path / "labels3", np.zeros(3), gz=False)
    with pytest.raises(SaeAuditError, match="3 labels"):
        IdxSet(tmp_path / "ok", tmp_path / "labels3")
    write_idx(tmp_path / "labels4", np.array([0, 1, 2, 5]), gz=False)
    with pytest.raises(SaeAuditError, match="class name"):
        IdxSet(tmp_path / "ok", tmp_path / "labels4", ["a", "b", "c"])
    with pytest.raises(SaeAuditError, match="does not exist"):
        IdxSet(tmp_path / "nope")


# --------------------------------------------------------------------------- #
# subsample and open_image_set
# --------------------------------------------------------------------------- #


class Range(ImageSet):
    def __init__(self, n: int) -> None:
        self.n = n
        self.name = f"range{n}"

    def __len__(self) -> int:
        return self.n

    def label(self, i: int) -> int:
        return i % 3

    def _open(self, i: int) -> Image.Image:
        return Image.new("L", (1, 1), i % 256)


def test_subsample_deterministic_sorted_nested() -> None:
    base = Range(1000)
    a = subsample(base, 100, seed=0)
    b = subsample(Range(1000), 100, seed=0)
    assert isinstance(a, Subset) and len(a) == 100
    assert a.indices == b.indices
    assert a.indices == sorted(set(a.indices))
    assert subsample(base, 100, seed=1).indices != a.indices
    assert set(subsample(base, 10, seed=0).indices) <= set(a.indices)
    # a pinned value: the same on every machine and numpy version
    assert subsample(base, 5, seed=0).indices == PINNED_SUBSAMPLE
    assert a.label(3) == a.indices[3] % 3
    assert np.asarray(a.load(0))[0, 0, 0] == a.indices[0] % 256
    assert subsample(base, None) is base and subsample(base, 5000) is base
    assert a.describe()["subset_of"] == 1000 and a.describe()["size"] == 100
    with pytest.raises(SaeAuditError):
        subsample(base, 0)
    # spread over the whole range, not a prefix
    assert max(a.indices) > 800 and min(a.indices) < 200


def _pinned() -> list[int]:
    # SplitMix64 reference, written out independently in pure Python.
    m = (1 << 64) - 1

    def mix(x: int) -> int:
        z = (x + 0x9E3779B97F4A7C15) & m
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        return z ^ (z >> 31)

    salt = mix(0)
    keys = sorted(range(1000), key=lambda j: (mix(j ^ salt), j))
    return sorted(keys[:5])


PINNED_SUBSAMPLE = [250, 286, 728, 781, 844]
assert _pinned() == PINNED_SUBSAMPLE


def test_open_image_set_specs(tmp_path: Path) -> None:
    (tmp_path / "imgs" / "c").mkdir(parents=True)
    for k in range(4):
        Image.new("RGB", (3, 3)).save(tmp_path / "imgs" / "c" / f"{k}.png")
    ds = open_image_set(str(tmp_path / "imgs"))
    assert isinstance(ds, ImageFolderSet) and len(ds) == 4
    assert len(open_image_set(tmp_path / "imgs", max_images=2)) == 2
    with pytest.raises(SaeAuditError) as info:
        open_image_set("no-such-set")
    for name in NAMED_SETS:
        assert name in str(info.value)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(SaeAuditError, match="not an IDX"):
        open_image_set(str(tmp_path / "notes.txt"))
    assert list_named_sets()[: len(NAMED_SETS)] == list(NAMED_SETS)  # built-ins first, then plugins' sets
    assert {"fashion-mnist:train", "fashion-mnist:test", "digits", "clipart", "sklearn-digits"} <= set(NAMED_SETS)


def test_missing_package_names_it(tmp_path: Path, monkeypatch) -> None:
    import sae_audit.data.demo as demo

    monkeypatch.setattr(demo, "FASHION_MNIST_DIR", tmp_path / "none")
    monkeypatch.setattr(demo, "CLIPART_DIR", tmp_path / "none")
    monkeypatch.setattr(demo, "DIGITS_PNG_CANDIDATES", (tmp_path / "none.png",))
    with pytest.raises(SaeAuditError, match="dataset-fashion-mnist"):
        open_image_set("fashion-mnist:test")
    with pytest.raises(SaeAuditError, match="openclipart-png"):
        open_image_set("clipart")
    with pytest.raises(SaeAuditError, match="opencv-doc"):
        open_image_set("digits")


# --------------------------------------------------------------------------- #
# the real demo sets (need the Debian / PyPI packages)
# --------------------------------------------------------------------------- #

FMNIST = Path("/usr/share/datasets/fashion-mnist")
DIGITS_PNG = Path("/usr/share/doc/opencv-doc/examples/data/digits.png")
CLIPART = Path("/usr/share/openclipart/png")


@pytest.mark.slow
@pytest.mark.skipif(not FMNIST.is_dir() and not os.environ.get("CI"), reason="apt dataset-fashion-mnist not installed")
def test_fashion_mnist_test_split() -> None:
    ds = open_image_set("fashion-mnist:test")
    assert len(ds) == 10000
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot" and len(ds.classes) == 10
    # label counts read independently: IDX label file = 8-byte header + N bytes
    raw = gzip.decompress((FMNIST / "t10k-labels-idx1-ubyte.gz").read_bytes())
    assert struct.unpack(">II", raw[:8]) == (0x801, 10000)
    expected = np.frombuffer(raw[8:], dtype=np.uint8)
    assert (np.bincount(expected, minlength=10) == 1000).all()  # the published balanced split
    got = np.array([ds.label(i) for i in range(len(ds))])
    assert (got == expected).all()
    img_raw = gzip.decompress((FMNIST / "t10k-images-idx3-ubyte.gz").read_bytes())
    assert struct.unpack(">IIII", img_raw[:16]) == (0x803, 10000, 28, 28)
    first = np.frombuffer(img_raw[16 : 16 + 784], dtype=np.uint8).reshape(28, 28)
    assert (np.asarray(ds.load(0))[..., 1] == first).all()
    assert ds.label(0) == 9  # the first test image is an ankle boot


@pytest.mark.slow
@pytest.mark.skipif(not FMNIST.is_dir() and not os.environ.get("CI"), reason="apt dataset-fashion-mnist not installed")
def test_fashion_mnist_train_split() -> None:
    ds = open_image_set("fashion-mnist:train", max_images=500, seed=3)
    assert len(ds) == 500 and ds.base.__len__() == 60000
    assert_rgb8(ds.load(499), (28, 28))


@pytest.mark.slow
@pytest.mark.skipif(not DIGITS_PNG.is_file() and not os.environ.get("CI"), reason="apt opencv-doc not installed")
def test_opencv_digits_layout() -> None:
    ds = open_image_set("digits")
    assert len(ds) == 5000
    labels = np.array([ds.label(i) for i in range(len(ds))])
    assert (np.bincount(labels, minlength=10) == 500).all()
    # OpenCV samples/python/digits.py: 2000x1000, 50 rows x 100 cols of 20x20, 5 rows per digit
    grid = np.asarray(Image.open(DIGITS_PNG).convert("L"))
    assert grid.shape == (1000, 2000)
    for i in (0, 1, 99, 100, 499, 500, 2345, 4999):
        r, c = divmod(i, 100)
        cell = grid[r * 20 : (r + 1) * 20, c * 20 : (c + 1) * 20]
        a = assert_rgb8(ds.load(i), (20, 20))
        assert (a[..., 0] == cell).all()
        assert ds.label(i) == r // 5
        # visibly a digit: some ink, mostly background
        ink = (a[..., 0] > 127).mean()
        assert 0.03 < ink < 0.6


@pytest.mark.slow
@pytest.mark.skipif(not CLIPART.is_dir() and not os.environ.get("CI"), reason="apt openclipart-png not installed")
def test_clipart() -> None:
    ds = open_image_set("clipart")
    assert len(ds) > 1000
    top = sorted(p.name for p in CLIPART.iterdir() if p.is_dir())
    assert ds.classes == top
    sub = subsample(ds, 20, seed=0)
    for i in range(len(sub)):
        im = sub.load(i)
        assert im.mode == "RGB"
        assert sub.item_id(i).split("/")[0] == ds.classes[sub.label(i)]


@pytest.mark.slow
def test_sklearn_digits() -> None:
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    ds = open_image_set("sklearn-digits")
    bunch = load_digits()
    assert len(ds) == 1797 == len(bunch.target)
    a = assert_rgb8(ds.load(10), (8, 8))
    assert (a[..., 0] == np.rint(bunch.images[10] * 255 / 16)).all()
    assert ds.label(10) == bunch.target[10]

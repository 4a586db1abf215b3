"""sae_audit.safe_files: only regular files are read, with caps, on real FIFOs, devices and links."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from sae_audit.errors import SaeAuditError
from sae_audit.safe_files import check_regular, gunzip_bytes, parse_json, printable, read_bytes, read_json_file
from tests.isolated import run_isolated


def test_a_fifo_and_dev_zero_are_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.json")
    os.symlink("/dev/zero", tmp_path / "zero.json")
    out = run_isolated(f"""
        from sae_audit.errors import SaeAuditError
        from sae_audit.safe_files import read_bytes, read_json_file
        msgs = []
        for name in ("pipe.json", "zero.json"):
            try:
                read_json_file({str(tmp_path)!r} + "/" + name, "SAE config")
            except SaeAuditError as exc:
                msgs.append(str(exc))
        report(msgs=msgs)
    """, timeout=30)
    assert "is a FIFO (named pipe), not a regular file" in out["msgs"][0]
    assert "is a character device, not a regular file" in out["msgs"][1]


def test_what_is_not_a_regular_file_is_named(tmp_path: Path) -> None:
    os.symlink(tmp_path / "missing", tmp_path / "dangling")
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    (tmp_path / "dir").mkdir()
    with pytest.raises(SaeAuditError, match="symbolic link to a file that does not exist"):
        check_regular(tmp_path / "dangling")
    with pytest.raises(SaeAuditError, match="cannot open file .*loop.*symbolic links"):
        check_regular(tmp_path / "loop")
    with pytest.raises(SaeAuditError, match="is a folder, not a regular file"):
        check_regular(tmp_path / "dir")
    with pytest.raises(SaeAuditError, match="does not exist"):
        check_regular(tmp_path / "nothing")
    (tmp_path / "f").write_text("x")
    os.symlink(tmp_path / "f", tmp_path / "link")
    assert check_regular(tmp_path / "link").st_size == 1  # a link to a regular file is fine


def test_size_caps(tmp_path: Path) -> None:
    (tmp_path / "big.json").write_bytes(b" " * 2000 + b"{}")
    with pytest.raises(SaeAuditError, match="2,002 bytes, more than the 1,000 bytes"):
        read_bytes(tmp_path / "big.json", 1000, "SAE config")
    assert read_bytes(tmp_path / "big.json", 2002).endswith(b"{}")


def test_json_nested_too_deeply_is_one_message(tmp_path: Path) -> None:
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(SaeAuditError, match="nested too deeply"):
        read_json_file(tmp_path / "deep.json", "SAE config", expect_object=False)
    with pytest.raises(SaeAuditError, match=r"cfg.json is not valid JSON \(Expecting value at line 2, column 1\)"):
        parse_json("[\n", "cfg.json")
    (tmp_path / "list.json").write_text(json.dumps([1]))
    with pytest.raises(SaeAuditError, match="must hold a JSON object, not a list"):
        read_json_file(tmp_path / "list.json")


def test_gunzip_stops_at_the_cap() -> None:
    bomb = gzip.compress(b"\0" * (8 << 20))  # 8 MiB of zeros, about 8 KB compressed
    assert len(bomb) < 20_000
    with pytest.raises(SaeAuditError, match="expands to more than 1,048,576 bytes"):
        gunzip_bytes(bomb, 1 << 20, "x.gz")
    assert gunzip_bytes(gzip.compress(b"abc") + gzip.compress(b"def"), 10, "two members") == b"abcdef"
    with pytest.raises(SaeAuditError, match="truncated gzip"):
        gunzip_bytes(bomb[: len(bomb) // 2], 64 << 20, "x.gz")


def test_printable_names() -> None:
    assert printable("ok/é.png") == "ok/é.png"
    bad = os.fsdecode(b"bad\xff.png")
    assert printable(bad) == "bad\\xff.png"
    assert printable(b"a\nb\x1b[31m.png") == "a\\nb\\x1b[31m.png"
    assert printable("evil\u202egnp.exe") == "evil\\u202egnp.exe"  # a bidi override cannot disguise a name
    for fine in ("photo\xa01.png", "写真\u30001.png", "👩\u200d💻.png"):  # spaces and joiners of any script stay
        assert printable(fine) == fine
    json.dumps(printable(bad), ensure_ascii=False).encode("utf-8")  # no lone surrogate left

"""Fault cases of `camseg predict`: outputs that would overwrite each other, a missing input, an
unreadable file, a folder that holds predict's own earlier outputs, decompression bombs.

Marked `faults`: ./scripts/faults.sh runs them with tests/test_faults.py.
"""

from __future__ import annotations

import json
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import pytest
from helpers import one_line_error
from PIL import Image

pytestmark = [pytest.mark.faults, pytest.mark.slow]  # every case predicts with trained_run

FRAME = "0001TP_006750.png"


def _records(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that says width x height RGB but holds almost no pixel data: what a
    decompression bomb's header looks like, at no cost to the test."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )
    return path


def test_outputs_of_inputs_with_one_name_never_overwrite(trained_run, camvid_tiny, tmp_path, cli):
    """dupA/x.png, dupA/x-2.png, dupB/x.png, dupB/x.jpg: four inputs, four sets of outputs (the
    renamed second x must not take x-2, which dupA/x-2.png has)."""
    src = Image.open(camvid_tiny / "images" / FRAME).convert("RGB")
    (tmp_path / "dupA").mkdir()
    (tmp_path / "dupB").mkdir()
    sizes = {  # a different size each, so every mask shows which input it came from
        "dupA/x.png": (128, 96),
        "dupA/x-2.png": (100, 80),
        "dupB/x.png": (90, 70),
        "dupB/x.jpg": (64, 48),
    }
    for name, size in sizes.items():
        src.resize(size).save(tmp_path / name)
    out = tmp_path / "out"
    result = cli(
        "predict",
        tmp_path / "dupA",
        tmp_path / "dupB",
        "--run",
        trained_run,
        "--out",
        out,
        "--json",
    )
    assert result.exit_code == 0, result.output
    records = _records(result)
    assert len(records) == 4
    written = [Path(p) for r in records for p in r["outputs"].values()]
    assert len(set(written)) == 12
    assert sorted([*written, out / "legend.png"]) == sorted(out.iterdir())
    for r in records:
        given = Path(r["image"]).relative_to(tmp_path).as_posix()
        for path in r["outputs"].values():
            assert Image.open(path).size == sizes[given], (given, path)
    assert "share a name with an earlier one" in result.stderr


def test_missing_input_is_one_error_and_creates_nothing(trained_run, camvid_tiny, tmp_path, cli):
    out = tmp_path / "out"
    missing = tmp_path / "nope.png"
    result = cli(
        "predict", camvid_tiny / "images" / FRAME, missing, "--run", trained_run, "--out", out
    )
    one_line_error(result, str(missing), "no such file or folder")
    assert not out.exists()


def test_unreadable_file_is_reported_once(trained_run, camvid_tiny, tmp_path, cli):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(camvid_tiny / "images" / FRAME, folder / "good.png")
    good = (folder / "good.png").read_bytes()
    (folder / "broken.png").write_bytes(good[: len(good) // 3])
    result = cli("predict", folder, "--run", trained_run, "--out", tmp_path / "out")
    assert result.exit_code == 1
    assert result.stderr.count("skipped") == 1 and "broken.png" in result.stderr, result.stderr
    assert "1 of 2 input(s) could not be read" in result.stderr


def test_folder_with_earlier_outputs_segments_only_the_photos(
    trained_run, camvid_tiny, tmp_path, cli
):
    folder = tmp_path / "frames"
    folder.mkdir()
    shutil.copy(camvid_tiny / "images" / FRAME, folder / "a.png")
    # a photo of the user's that merely has an output-like name is an input like any other
    shutil.copy(camvid_tiny / "images" / FRAME, folder / "b_color.png")
    first = cli("predict", folder, "--run", trained_run, "--out", folder, "--json")
    assert first.exit_code == 0, first.output
    assert len(_records(first)) == 2 and len(list(folder.iterdir())) == 9  # and legend.png

    again = cli("predict", folder, "--run", trained_run, "--out", tmp_path / "out", "--json")
    assert again.exit_code == 0, again.output
    assert sorted(Path(r["image"]).name for r in _records(again)) == ["a.png", "b_color.png"]
    assert "left out 7 file(s) that camseg predict wrote earlier" in again.stderr

    # named on its own, an output is still segmented
    named = cli("predict", folder / "a_mask.png", "--run", trained_run, "--out", tmp_path / "o2")
    assert named.exit_code == 0, named.output
    assert (tmp_path / "o2" / "a_mask_mask.png").exists()


def test_decompression_bomb_limit_is_a_stated_bound(trained_run, camvid_tiny, tmp_path, cli):
    """Up to camseg's 200-megapixel limit no raw DecompressionBombWarning (Pillow's own warns
    from 89); above it, the file is skipped with a reason naming the limit."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(camvid_tiny / "images" / FRAME, folder / "good.png")
    _png_header_only(folder / "big.png", 12000, 10000)  # 120 MP: allowed, then truncated
    _png_header_only(folder / "bomb.png", 20000, 20000)  # 400 MP: over the limit
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = cli("predict", folder, "--run", trained_run, "--out", tmp_path / "out")
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    bomb = [line for line in lines if "bomb.png" in line]
    assert bomb == [
        f"camseg: skipped {folder / 'bomb.png'}: 20000x20000 is 400 megapixels, over predict's "
        "limit of 200 (a guard against decompression bombs)"
    ]
    assert [line for line in lines if "big.png" in line and "megapixels" not in line]
    assert "2 of 3 input(s) could not be read" in result.stderr
    assert (tmp_path / "out" / "good_mask.png").exists()

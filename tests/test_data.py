"""Dataset layouts on real CamVid / CamSeq01 data, the CamSeq01 conversion, synthetic scenes
and the faults `data check` must catch."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fault_cases import DATA_FAULTS, broken_copy, paint_unknown_colour
from PIL import Image

from camseg.config.load import load_config
from camseg.data import build_dataloaders, check_dataset, find_files
from camseg.data.files import read_codes, resource_path
from camseg.data.prepare import camvid_valid_names, prepare_camseq01
from camseg.data.synth import generate
from camseg.errors import CamsegError


def tiny_cfg(root: Path, *overrides: str):
    return load_config(None, [f"data.root={root}", "data.size=[96,128]", *overrides]).data


def test_camvid_tiny_layout_split_and_batch(camvid_tiny):
    cfg = tiny_cfg(camvid_tiny, "data.batch_size=4", "data.num_workers=0")
    files = find_files(cfg)
    assert len(files.codes) == 32 and files.void_index == 30
    report = check_dataset(files)
    assert report.ok, report.problems
    assert (report.n_train, report.n_valid) == (85, 15)
    dls = build_dataloaders(cfg, files)
    assert len(dls.train_ds) == 85 and len(dls.valid_ds) == 15
    valid_names = {Path(p).name for p in dls.valid_ds.items}
    assert valid_names == set((camvid_tiny / "valid.txt").read_text().split())
    xb, yb = dls.one_batch()
    assert xb.shape == (4, 3, 96, 128) and xb.dtype == torch.float32
    assert yb.shape == (4, 96, 128) and yb.dtype == torch.int64
    assert int(yb.max()) < 32
    assert abs(float(xb.mean())) < 1.5  # ImageNet-normalised, not 0-255


def test_scale_size_resizes_from_source(camvid_tiny):
    cfg = tiny_cfg(camvid_tiny, "data.size=0.5", "data.batch_size=2", "data.num_workers=0")
    xb, yb = build_dataloaders(cfg, find_files(cfg)).one_batch()
    assert xb.shape[-2:] == (48, 64) and yb.shape[-2:] == (48, 64)


def test_camseq01_conversion_matches_camvid_tiny(camseq01_sample, camvid_tiny, tmp_path):
    out = tmp_path / "camseq"
    res = prepare_camseq01(camseq01_sample, out, gap=0)  # no gap: every frame is converted
    assert (res.n_images, res.n_valid) == (4, 1) and res.gap_names == ()
    # codes come from label_colors.txt in its line order = the CamVid codes
    assert read_codes(out / "codes.txt") == read_codes(camvid_tiny / "codes.txt")
    # contiguous tail of the sequence, not a random pick
    assert (out / "valid.txt").read_text().split() == ["0016E5_07997.png"]
    for stem in ["0016E5_07973", "0016E5_07979", "0016E5_07995", "0016E5_07997"]:
        mine = Image.open(out / "labels" / f"{stem}_P.png")
        assert mine.mode == "L" and mine.size == (960, 720)
        small = np.asarray(mine.resize((128, 96), Image.NEAREST))
        ref = np.asarray(Image.open(camvid_tiny / "labels" / f"{stem}_P.png"))
        assert (small == ref).mean() >= 0.99, stem
    cfg = load_config(None, [f"data.root={out}"]).data
    assert check_dataset(find_files(cfg)).ok


def test_camseq01_flat_layout_and_direct_loading(camseq01_sample, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in (camseq01_sample / "CamSeq01_Raw").iterdir():
        shutil.copy(p, flat / p.name)
    for p in (camseq01_sample / "CamSeq01_Labeled").iterdir():
        shutil.copy(p, flat / p.name)
    shutil.copy(camseq01_sample / "label_colors.txt", flat)
    (flat / "valid.txt").write_text("0016E5_07997.png\n")
    cfg = tiny_cfg(flat, "data.layout=camseq01", "data.batch_size=3", "data.num_workers=0")
    files = find_files(cfg)
    assert next(p.stem for p in files.images) == "0016E5_07973" and len(files.images) == 4
    assert check_dataset(files).ok
    _xb, yb = build_dataloaders(cfg, files).one_batch()
    assert yb.shape == (3, 96, 128) and int(yb.max()) < 32


def test_camseq01_valid_file_and_unknown_colour(camseq01_sample, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(camseq01_sample, src)
    needle = paint_unknown_colour(src)
    with pytest.raises(CamsegError, match=re.escape(needle)):
        prepare_camseq01(src, tmp_path / "a")
    assert not (tmp_path / "a").exists()  # nothing half-written
    valid = tmp_path / "v.txt"
    valid.write_text("0016E5_07973.png\n0016E5_07979.png\n")
    res = prepare_camseq01(src, tmp_path / "b", valid=valid, unknown_as="Void")
    assert res.unknown_pixels == 100 and res.n_valid == 2
    void = np.asarray(Image.open(tmp_path / "b" / "labels" / "0016E5_07979_P.png"))[:10, :10]
    assert (void == 30).all()


SAMPLE = ["0016E5_07973.png", "0016E5_07979.png", "0016E5_07995.png", "0016E5_07997.png"]


def _assert_gap(out: Path, frames: list[str], gap: int) -> None:
    """No train frame of the prepared `out` lies within `gap` frames of its valid block."""
    valid = (out / "valid.txt").read_text().split()
    train = sorted({p.name for p in (out / "images").iterdir()} - set(valid))
    first_valid = frames.index(valid[0])
    assert valid == frames[first_valid:]  # the contiguous tail
    assert train == frames[: first_valid - gap]  # everything before the gap, nothing in it


def test_prepare_leaves_a_gap_before_the_valid_frames(cli, camseq01_sample, tmp_path):
    out = tmp_path / "camseq"
    result = cli("data", "prepare", camseq01_sample, "--out", out)
    assert result.exit_code == 0, result.output
    # default: 1 gap frame per 20, rounded up -> 07995, the near-duplicate of the valid 07997
    _assert_gap(out, SAMPLE, 1)
    assert not (out / "labels" / "0016E5_07995_P.png").exists()
    assert "wrote 3 frames (2 train / 1 valid)" in result.stdout
    assert "valid: 0016E5_07997.png; left out as the gap: 0016E5_07995.png" in result.stdout
    assert cli("data", "check", "--root", out).exit_code == 0

    wide = tmp_path / "wide"
    result = cli("data", "prepare", camseq01_sample, "--out", wide, "--gap", "2")
    assert result.exit_code == 0, result.output
    _assert_gap(wide, SAMPLE, 2)
    assert "left out as the gap: 0016E5_07979.png, 0016E5_07995.png" in result.stdout


def test_prepare_gap_0_is_the_old_contiguous_split(cli, camseq01_sample, tmp_path):
    out = tmp_path / "camseq"
    result = cli("data", "prepare", camseq01_sample, "--out", out, "--gap", "0")
    assert result.exit_code == 0, result.output
    assert "wrote 4 frames (3 train / 1 valid)" in result.stdout
    assert "valid: 0016E5_07997.png\n" in result.stdout and "left out" not in result.stdout
    assert sorted(p.name for p in (out / "images").iterdir()) == SAMPLE
    _assert_gap(out, SAMPLE, 0)


def test_prepare_gap_on_a_101_frame_video(cli, camseq01_sample, tmp_path):
    # CamSeq01's length, as 8x8 frames: 21 valid, 6 gap, 74 train; the output stays one line each
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(camseq01_sample / "label_colors.txt", src)
    frames = [f"0016E5_{n:05d}.png" for n in range(7959, 8160, 2)]
    for name in frames:
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src / name)
        Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(src / name.replace(".", "_L."))
    out = tmp_path / "out"
    result = cli("data", "prepare", src, "--out", out)
    assert result.exit_code == 0, result.output
    _assert_gap(out, frames, 6)
    assert "wrote 95 frames (74 train / 21 valid)" in result.stdout
    assert (
        "valid: 0016E5_08119.png, 0016E5_08121.png, ..., 0016E5_08159.png (21 frames); "
        "left out as the gap: 0016E5_08107.png, 0016E5_08109.png, ..., 0016E5_08117.png "
        "(6 frames)"
    ) in result.stdout


def test_camvid_valid_rule_reproduces_tiny_split(camvid_tiny):
    names = sorted(p.name for p in (camvid_tiny / "images").iterdir())
    assert camvid_valid_names(names) == sorted((camvid_tiny / "valid.txt").read_text().split())


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_synth_is_deterministic_and_valid(tmp_path):
    a = generate(tmp_path / "a", n=8, size=(64, 96), seed=3)
    b = generate(tmp_path / "b", n=8, size=(64, 96), seed=3)
    c = generate(tmp_path / "c", n=8, size=(64, 96), seed=4)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)
    codes = read_codes(resource_path("codes.txt"))
    report = check_dataset(find_files(tiny_cfg(a)))
    assert report.ok and (report.n_train, report.n_valid) == (6, 2)
    present = {codes[i] for i, n in enumerate(report.class_pixels) if n}
    assert {"Sky", "Building", "Road", "Sidewalk", "LaneMkgsDriv", "Void"} <= present
    assert len(present) >= 8  # poles, trees, cars, people ... appear too
    photo = np.asarray(Image.open(a / "images" / "synth_00000.png"))
    assert photo.shape == (64, 96, 3) and photo.std() > 20  # textured, not flat colour


def test_synthetic_layout_generates_on_first_use(tmp_path):
    cfg = tiny_cfg(tmp_path / "syn", "data.layout=synthetic", "data.synthetic.n=6")
    files = find_files(cfg)
    assert len(files.images) == 6 and (tmp_path / "syn" / "valid.txt").is_file()


# ---- faults data check must catch (the table in fault_cases.py) ------------------------------


@pytest.mark.parametrize("case", DATA_FAULTS, ids=lambda case: case.name)
def test_data_faults_are_named(case, request, tmp_path):
    root = broken_copy(case, request.getfixturevalue(case.source), tmp_path / "data")
    cfg = tiny_cfg(root, f"data.layout={case.layout}")
    if case.refused:  # the folder cannot be read as a dataset at all
        with pytest.raises(CamsegError, match=re.escape(case.needle)):
            find_files(cfg)
    else:
        problems = check_dataset(find_files(cfg)).problems
        assert any(case.needle in p for p in problems), problems


def test_cache_gives_the_same_batches_and_remakes_changed_files(tiny_copy, tmp_path):
    base = ["data.batch_size=5", "data.num_workers=0", "data.augment.enabled=false"]
    plain = tiny_cfg(tiny_copy, *base)
    cached = tiny_cfg(tiny_copy, *base, f"data.cache={tmp_path / 'cache'}", "data.size=[48,64]")
    plain = plain.model_copy(update={"size": (48, 64)})
    files = find_files(plain)
    xa, ya = build_dataloaders(plain, files).valid.one_batch()
    xb, yb = build_dataloaders(cached, files).valid.one_batch()
    assert torch.equal(ya, yb) and torch.allclose(xa, xb)
    entries = sorted((tmp_path / "cache").rglob("*.npy"))
    assert len(entries) == 200  # 100 frames + 100 masks, made once
    frame = tiny_copy / "images" / "0016E5_07973.png"
    Image.open(frame).transpose(Image.FLIP_LEFT_RIGHT).save(frame)  # the source changes
    build_dataloaders(cached, files)
    assert len(sorted((tmp_path / "cache").rglob("*.npy"))) == 201

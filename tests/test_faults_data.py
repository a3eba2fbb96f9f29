"""Silent wrong results from a dataset: `data check`, training, `evaluate` and `predict` read
names and pixels through one list reader and one image loader, so what data check approves is
what the model trains and is scored on. One case per way they used to disagree.
Run them with the fault suite: ./scripts/faults.sh (pytest -m faults).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY, fast_args, one_line_error, small_copy
from PIL import Image

from camseg.config.load import load_config
from camseg.data import build_dataloaders, find_files
from camseg.data.files import load_rgb

pytestmark = pytest.mark.faults


def _small(camvid_tiny: Path, tmp_path: Path) -> Path:
    """4 validation and 8 training frames of camvid_tiny."""
    return small_copy(camvid_tiny, tmp_path / "data", n_valid=4, n_train=8)


def _valid_names(root: Path) -> list[str]:
    return (root / "valid.txt").read_text().split()


def _text(result) -> str:
    """stderr with rich's line wrapping undone."""
    return " ".join(result.stderr.split())


def _split_said(result) -> tuple[int, int]:
    """(train, valid) as `data check` prints them."""
    m = re.search(r"(\d+) train / (\d+) valid", result.stdout)
    assert m, result.output
    return int(m.group(1)), int(m.group(2))


def _data_cfg(root: Path, *extra: str):
    """The training config of fast_args (as `camseg train` reads it), data section only."""
    sets = fast_args(root, root.parent / "runs", "data.num_workers=0", *extra)[3::2]
    return load_config(TINY, sets).data


# ---- valid.txt and codes.txt: one reader --------------------------------------------------


def _pad_names(root: Path) -> str:
    names = _valid_names(root)
    padded = [f"  {n}\t" if i % 2 else n for i, n in enumerate(names)]
    (root / "valid.txt").write_bytes("\r\n".join(padded).encode() + b"\r\n")  # and CRLF
    return "spaces or tabs around the name"


def _bom_valid(root: Path) -> str:
    (root / "valid.txt").write_text("\n".join(_valid_names(root)) + "\n", encoding="utf-8-sig")
    return "byte-order mark"


def _bom_codes(root: Path) -> str:
    codes = root / "codes.txt"
    codes.write_text(codes.read_text(), encoding="utf-8-sig")
    return "byte-order mark"


LIST_QUIRKS = {
    "spaces and tabs around names in valid.txt": _pad_names,
    "byte-order mark in valid.txt": _bom_valid,
    "byte-order mark in codes.txt": _bom_codes,
}


@pytest.mark.parametrize("case", LIST_QUIRKS)
def test_list_files_read_alike_by_check_and_training(case, camvid_tiny, tmp_path, cli):
    root = _small(camvid_tiny, tmp_path)
    valid = set(_valid_names(root))
    clean_codes = (camvid_tiny / "codes.txt").read_text().split()
    needle = LIST_QUIRKS[case](root)

    checked = cli("data", "check", "--root", root)
    assert checked.exit_code == 0, checked.output
    assert _split_said(checked) == (8, 4)
    assert needle in _text(checked)  # what the reader changed is said, not hidden

    # what `camseg train` and `camseg evaluate` build: the same split, the same class names
    cfg = _data_cfg(root)
    files = find_files(cfg)
    dls = build_dataloaders(cfg, files)
    assert (len(dls.train_ds), len(dls.valid_ds)) == (8, 4)
    assert {Path(p).name for p in dls.valid_ds.items} == valid
    assert files.codes == clean_codes  # the classes the model is built and saved with
    assert "\ufeff" not in checked.stdout


# ---- one image loader ----------------------------------------------------------------------


@pytest.mark.parametrize("cache", [False, True], ids=["decoded", "cached"])
def test_16bit_grey_frames_train_on_scaled_pixels(cache, camvid_tiny, tmp_path, cli):
    root = _small(camvid_tiny, tmp_path)
    valid_frame = root / "images" / _valid_names(root)[0]
    train_frame = next(
        p for p in sorted((root / "images").iterdir()) if p.name not in _valid_names(root)
    )
    for frame in (train_frame, valid_frame):
        grey = np.asarray(Image.open(frame).convert("L")).astype(np.uint16) * 257
        Image.fromarray(grey).save(frame)
        assert Image.open(frame).mode.startswith("I")
    checked = cli("data", "check", "--root", root)
    assert checked.exit_code == 0, checked.output
    assert "16-bit grey scaled to 8-bit" in _text(checked)

    extra = [f"data.cache={tmp_path / 'cache'}"] if cache else []
    cfg = _data_cfg(root, "data.size=[96,128]", *extra)  # native size: no resampling
    dls = build_dataloaders(cfg, find_files(cfg))
    predicted = load_rgb(valid_frame)  # what `camseg predict` feeds the model
    assert 20 < predicted.mean() < 200
    for ds, frame in ((dls.train_ds, train_frame), (dls.valid_ds, valid_frame)):
        i = [Path(p) for p in ds.items].index(frame)
        pixels = np.asarray(ds[i][0])
        assert (pixels < 255).mean() > 0.5  # not clipped to white
        assert np.array_equal(pixels, load_rgb(frame))
    scored = dls.test_dl([valid_frame], with_labels=True)  # as training validates
    assert np.array_equal(np.asarray(scored.dataset[0][0]), predicted)


def _exif_jpeg(png: Path, stored: np.ndarray) -> Path:
    """`stored` saved beside `png` as <stem>.jpg tagged 'rotate 90 clockwise to display'."""
    exif = Image.Exif()
    exif[0x0112] = 6
    jpg = png.with_suffix(".jpg")
    Image.fromarray(stored).save(jpg, quality=95, exif=exif.tobytes())
    png.unlink()
    return jpg


@pytest.mark.slow
def test_exif_rotated_jpegs_read_upright_everywhere(trained_run, camvid_tiny, tmp_path, cli):
    root = _small(camvid_tiny, tmp_path)
    names = _valid_names(root)
    images = root / "images"
    upright = np.asarray(Image.open(images / names[0]).convert("RGB"))
    # a phone photo: pixels stored sideways, the tag turns them upright (128x96, as the label)
    jpg = _exif_jpeg(images / names[0], np.rot90(upright, k=1).copy())
    (root / "valid.txt").write_text("\n".join([jpg.name, *names[1:]]) + "\n")

    checked = cli("data", "check", "--root", root)
    assert checked.exit_code == 0, checked.output
    assert "EXIF orientation 6 applied" in _text(checked)
    cfg = _data_cfg(root, "data.size=[96,128]")
    dls = build_dataloaders(cfg, find_files(cfg))
    trained_on = np.asarray(dls.valid_ds[[Path(p) for p in dls.valid_ds.items].index(jpg)][0])
    assert trained_on.shape == (96, 128, 3) and np.array_equal(trained_on, load_rgb(jpg))

    out = tmp_path / "masks"
    predicted = cli("predict", jpg, "--run", trained_run, "--out", out, "--format", "index")
    assert predicted.exit_code == 0, predicted.output
    label = root / "labels" / f"{jpg.stem}_P.png"
    assert Image.open(out / f"{jpg.stem}_mask.png").size == Image.open(label).size == (128, 96)

    # a label drawn on the sideways pixels cannot match what any command reads: refused
    Image.open(label).transpose(Image.Transpose.ROTATE_90).save(label)
    runs = tmp_path / "runs"
    one_line_error(cli("train", *fast_args(root, runs)), jpg.name, "EXIF orientation")
    assert not runs.exists()


# ---- pairs and the validation set ----------------------------------------------------------


def test_two_images_for_one_label_are_refused(camvid_tiny, tmp_path, cli):
    root = _small(camvid_tiny, tmp_path)
    png = root / "images" / _valid_names(root)[0]
    Image.open(png).save(png.with_suffix(".jpg"), quality=95)
    runs = tmp_path / "runs"
    one_line_error(
        cli("train", *fast_args(root, runs)), f"{png.stem}_P.png", png.name, f"{png.stem}.jpg"
    )
    assert not runs.exists()
    checked = cli("data", "check", "--root", root)
    assert checked.exit_code == 2 and "dataset OK" not in checked.stdout


def test_all_void_validation_labels_are_refused_before_training(camvid_tiny, tmp_path, cli):
    root = _small(camvid_tiny, tmp_path)
    void = (camvid_tiny / "codes.txt").read_text().split().index("Void")
    for name in _valid_names(root):
        label = root / "labels" / f"{Path(name).stem}_P.png"
        Image.fromarray(np.full_like(np.asarray(Image.open(label)), void)).save(label)
    checked = cli("data", "check", "--root", root)
    assert checked.exit_code == 2
    assert "validation labels is Void" in _text(checked)
    runs = tmp_path / "runs"
    one_line_error(cli("train", *fast_args(root, runs)), "valid.txt", "is Void", "acc_camvid")
    assert not runs.exists()  # no run folder, no summary.json with a placeholder score

"""Getting data into the camvid layout: converting a CamSeq01 download once (`data prepare`) and
the real download paths (`data download`). Writes to a temporary folder and renames it into
place, so an interrupted conversion never leaves a half-made dataset."""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from camseg.core.atomic import require_folder_path
from camseg.data.files import (
    ColorToIndex,
    new_dataset_folder,
    read_names,
    write_codes_and_split,
)
from camseg.data.layouts import camseq01_files
from camseg.errors import CamsegError

log = logging.getLogger(__name__)

CAMSEQ01_URL = "http://mi.eng.cam.ac.uk/research/projects/VideoRec/CamSeq01/CamSeq01.zip"
# Default gap between the train frames and the held-out tail: one frame per 20 (5%), rounded up:
# 6 of CamSeq01's 101 frames, about 0.4 s of its 15-per-second video; 1 of the 4-frame sample.
GAP_EVERY = 20


@dataclass(frozen=True)
class PrepareResult:
    out: Path
    n_images: int  # frames written: train + valid, never the gap
    n_valid: int
    unknown_pixels: int
    valid_names: tuple[str, ...] = ()
    gap_names: tuple[str, ...] = ()  # frames left out of the prepared dataset


def split_tail(
    names: list[str], valid_fraction: float, gap: int | None
) -> tuple[list[str], list[str]]:
    """(valid names, gap names): the last `valid_fraction` of a video's frames validate, and the
    `gap` frames just before them are dropped, so no train frame nearly duplicates a valid one.

    gap=None picks one frame per GAP_EVERY, rounded up, shrunk to leave at least one train
    frame; an explicit gap that leaves none is an error.
    """
    if not 0 < valid_fraction < 1:
        raise CamsegError(f"--valid-fraction must be between 0 and 1, got {valid_fraction}")
    k = max(1, math.ceil(len(names) * valid_fraction))
    room = len(names) - k - 1  # frames a gap may take and still leave one for training
    if room < 0:
        raise CamsegError(
            f"--valid-fraction {valid_fraction} of {len(names)} frames leaves no train frame; "
            "use a smaller fraction"
        )
    if gap is None:
        gap = min(-(-len(names) // GAP_EVERY), room)
    elif gap < 0:
        raise CamsegError(f"--gap must be 0 or more frames, got {gap}")
    elif gap > room:
        raise CamsegError(
            f"--gap {gap} leaves no train frame: {len(names)} frames, {k} valid; "
            f"use --gap {room} or less, or a smaller --valid-fraction"
        )
    return names[-k:], names[len(names) - k - gap : len(names) - k]


def prepare_camseq01(
    src: Path,
    out: Path,
    *,
    valid: Path | None = None,
    valid_fraction: float = 0.2,
    gap: int | None = None,
    unknown_as: str | None = None,
) -> PrepareResult:
    """Convert colour labels to index masks; write images/, labels/, codes.txt, valid.txt.

    Without `valid`, the tail of the video validates and the `gap` frames before it are not
    written at all (the camvid layout trains on every image not in valid.txt); see split_tail.
    """
    if not src.is_dir():
        raise CamsegError(
            f"CamSeq01 folder not found: {src}; give the unpacked download (frames and *_L.png"
            " labels), or, online, camseg data download camseq01 --out DIR (downloads and"
            " converts it)"
        )
    if (src / "images").is_dir() and not (src / "label_colors.txt").is_file():
        raise CamsegError(
            f"{src} is already in the camvid layout (images/, no label_colors.txt): nothing to"
            " convert; train or evaluate it as it is"
        )
    files = camseq01_files(src, "valid.txt")
    if not files.images:
        raise CamsegError(f"{src}: no CamSeq01 frames found (<stem>.png beside <stem>_L.png)")
    if valid is not None and gap is not None:
        raise CamsegError("--gap applies to the automatic split only; drop it or drop --valid")
    require_folder_path(out, "--out", "give a new folder for the camvid layout")
    if out.exists() and any(out.iterdir()):  # fail before the slow conversion, not after
        raise CamsegError(f"output folder {out} exists and is not empty; choose a new --out")
    codes = files.codes
    unknown_idx = None
    if unknown_as is not None:
        if unknown_as not in codes:
            raise CamsegError(
                f"--unknown-as {unknown_as!r} is not a class of label_colors.txt (e.g. Void)"
            )
        unknown_idx = codes.index(unknown_as)
    convert = ColorToIndex(files.colors, unknown_as=unknown_idx)  # type: ignore[arg-type]
    names = [p.name for p in files.images]
    gap_names: list[str] = []
    if valid is not None:
        valid_names = read_names(valid)
        missing = [n for n in valid_names if n not in set(names)]
        if missing:
            raise CamsegError(f"{valid}: names not among the frames of {src}: {missing[:3]}")
    else:
        # The frames are a video: hold out a contiguous tail, never a random sample.
        valid_names, gap_names = split_tail(names, valid_fraction, gap)
    if len(set(valid_names)) >= len(names):
        raise CamsegError("the validation list covers every frame; leave some for training")

    unknown_total = 0
    dropped = set(gap_names)
    images = [img for img in files.images if img.name not in dropped]
    with new_dataset_folder(out) as tmp:
        for img in images:
            lbl = files.label_for(img)
            if not lbl.is_file():
                raise CamsegError(f"{img}: no label (expected {lbl})")
            with Image.open(lbl) as im:
                idx, unknown = convert.convert(np.asarray(im.convert("RGB")))
            if unknown:
                if unknown_idx is None:
                    colour, count = max(unknown.items(), key=lambda kv: kv[1])
                    raise CamsegError(
                        f"{lbl}: colour RGB{colour} ({count} px) is not in label_colors.txt; "
                        f"fix the label or pass --unknown-as Void"
                    )
                unknown_total += sum(unknown.values())
            Image.fromarray(idx, mode="L").save(tmp / "labels" / f"{img.stem}_P.png")
            shutil.copyfile(img, tmp / "images" / img.name)
        write_codes_and_split(tmp, codes, valid_names)
    if unknown_total:
        log.warning("%d pixels of unknown colours were labelled %s", unknown_total, unknown_as)
    return PrepareResult(
        out=out,
        n_images=len(images),
        n_valid=len(valid_names),
        unknown_pixels=unknown_total,
        valid_names=tuple(valid_names),
        gap_names=tuple(gap_names),
    )


# fastai's CamVid validation split is the CamSeq01 sequence: every second frame of 0016E5 from
# 07959 to 08159. camvid_tiny ships without a valid.txt; this rule recreates the same split.
def camvid_valid_names(names: list[str]) -> list[str]:
    keep = []
    for name in names:
        stem = Path(name).stem
        if stem.startswith("0016E5_") and stem[7:].isdigit():
            frame = int(stem[7:])
            if 7959 <= frame <= 8159 and frame % 2 == 1:
                keep.append(name)
    return keep


def _offline(url: str, out: Path, by_hand: str, err: Exception) -> CamsegError:
    return CamsegError(
        f"cannot download {url} ({type(err).__name__}: {err}); offline? {by_hand} under {out}"
    )


def download(name: str, out: Path) -> Path:
    """Fetch a dataset into `out` and return its camvid-layout folder."""
    if name in ("camvid", "camvid-tiny"):
        from fastai.data.external import URLs, untar_data

        url = URLs.CAMVID if name == "camvid" else URLs.CAMVID_TINY
        folder = "camvid" if name == "camvid" else "camvid_tiny"
        by_hand = "unpack the archive by hand (images/, labels/, codes.txt)"
        if not (out / folder / "images").is_dir():  # else untar_data reuses it, offline too
            try:  # before fastai's progress bar starts, which offline left a stray bar behind
                urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=30)
            except Exception as e:
                raise _offline(url, out / folder, by_hand, e) from None
        try:
            path = Path(untar_data(url, data=out))
        except Exception as e:
            raise _offline(url, out / folder, by_hand, e) from None
        valid = path / "valid.txt"
        if not valid.exists():
            names = sorted(p.name for p in (path / "images").iterdir())
            valid.write_text("\n".join(camvid_valid_names(names)) + "\n", encoding="utf-8")
        return path
    if name == "camseq01":
        dest = out / "camseq01"
        if dest.exists() and any(dest.iterdir()):
            raise CamsegError(f"{dest} exists and is not empty; remove it or choose another --out")
        raw = out / "CamSeq01_raw"
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            archive = Path(tmp) / "CamSeq01.zip"
            try:
                urllib.request.urlretrieve(CAMSEQ01_URL, archive)
            except Exception as e:
                raise _offline(CAMSEQ01_URL, raw, "unzip CamSeq01.zip by hand", e) from None
            with zipfile.ZipFile(archive) as z:
                z.extractall(raw)
        prepare_camseq01(raw, dest)
        return dest
    raise CamsegError(f"unknown dataset {name!r}; choose camvid, camvid-tiny or camseq01")

"""Batched inference on image files -> index masks, CamVid-coloured masks and overlays at each
input's own resolution. Reads anything PIL reads (RGBA, grey, 16-bit, EXIF-rotated); a file that
cannot be read is reported and skipped, the others are still written.

Needs only model.pth: no training config, no pickle.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from camseg.atomic import atomic_write
from camseg.data.files import IMAGE_SUFFIXES, natural_key
from camseg.errors import CamsegError
from camseg.model import ModelFile, read_model_file, resolve_device
from camseg.precision import PREDICT_DEFAULT, PredictPrecision, predict_precision

log = logging.getLogger(__name__)

FORMATS = ("index", "color", "overlay")


class FlipTTA(torch.nn.Module):
    """Test-time augmentation for segmentation: average the softmax of the image and of its
    mirror image, flipped back. (fastai's Learner.tta averages randomly warped inputs without
    warping the predictions back, which misaligns masks; a flip is its own inverse.)"""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.model(x).float().softmax(dim=1)
        p_flip = self.model(x.flip(-1)).float().softmax(dim=1).flip(-1)
        return ((p + p_flip) / 2).log()  # log-probabilities: argmax and NLL behave as logits


def load_rgb(path: Path) -> np.ndarray:
    """Any image PIL reads -> HxWx3 uint8: EXIF rotation applied, alpha dropped, grey and
    16-bit scaled to 8-bit RGB."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, dtype=np.float64)
            top = 65535.0 if arr.max() > 255 else 255.0
            im = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
        elif im.mode == "F":
            arr = np.asarray(im, dtype=np.float64)
            span = max(float(arr.max() - arr.min()), 1e-12)
            im = Image.fromarray(((arr - arr.min()) / span * 255).astype(np.uint8), "L")
        return np.asarray(im.convert("RGB"))


def to_model_input(rgb: np.ndarray, mf: ModelFile) -> torch.Tensor:
    """What fastai's valid pipeline does: squish-resize (bilinear), scale to [0, 1], normalise."""
    h, w = mf.size
    im = Image.fromarray(rgb)
    if im.size != (w, h):
        im = im.resize((w, h), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(mf.mean).view(3, 1, 1)
    std = torch.tensor(mf.std).view(3, 1, 1)
    return (x - mean) / std


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files as given; a folder -> its images; a glob pattern -> its matches (sorted)."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(
                (p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                key=lambda p: natural_key(p.name),
            )
            if not files:
                raise CamsegError(f"{path}: folder has no images ({', '.join(IMAGE_SUFFIXES)})")
            found += files
        elif path.exists() or not any(c in item for c in "*?["):
            found.append(path)
        else:
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True))
            if not matches:
                raise CamsegError(f"{item}: pattern matches no files")
            found += [p for p in matches if p.is_file()]
    if not found:
        raise CamsegError("no input images given")
    return found


@dataclass
class PredictResult:
    written: list[dict] = field(default_factory=list)  # one record per image
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _output_names(images: list[Path], out: Path) -> list[str]:
    """<stem>, made unique when two inputs share a stem."""
    seen: dict[str, int] = {}
    names = []
    for p in images:
        k = seen.get(p.stem, 0) + 1
        seen[p.stem] = k
        names.append(p.stem if k == 1 else f"{p.stem}-{k}")
    return names


def _save_png(path: Path, im: Image.Image) -> None:
    atomic_write(path, lambda f: im.save(f, format="PNG"))


def _decode(path: Path) -> tuple[np.ndarray | None, str | None]:
    try:
        return load_rgb(path), None
    except Exception as e:  # unreadable, truncated, not an image: report and go on
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()


Decoded = list[tuple[int, np.ndarray | None, str | None]]


def _batches(images: list[Path], batch_size: int, workers: int) -> Iterator[Decoded]:
    """Decode in a thread pool, one batch ahead of the network (PIL releases the GIL)."""
    starts = range(0, len(images), batch_size)
    with ThreadPoolExecutor(max_workers=workers) as pool:

        def submit(start: int) -> list:
            idx = range(start, min(start + batch_size, len(images)))
            return [(i, pool.submit(_decode, images[i])) for i in idx]

        pending = submit(starts[0]) if starts else []
        for k in range(len(starts)):
            current = pending
            pending = submit(starts[k + 1]) if k + 1 < len(starts) else []
            yield [(i, *fut.result()) for i, fut in current]


def auto_batch_size(device: torch.device) -> int:
    """On a GPU batches keep it busy; on a CPU one image at a time is fastest (measured: a
    ResNet34 U-Net at 360x480 runs 1.15 images/s at batch 1, 0.75 at batch 8 on 2 cores — the
    activations of a big batch outgrow the caches)."""
    return 16 if device.type == "cuda" else 1


def predict(
    inputs: list[str],
    model_path: Path,
    out: Path,
    *,
    batch_size: int | None = None,
    tta: bool = False,
    device: str = "auto",
    precision: PredictPrecision = PREDICT_DEFAULT,
    formats: tuple[str, ...] = FORMATS,
    on_image: Callable[[dict | None], None] | None = None,
) -> PredictResult:
    """Segment images; write the requested formats under `out` at each input's resolution."""
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise CamsegError(f"--format {','.join(formats)}: choose from {', '.join(FORMATS)}")
    if batch_size is not None and batch_size < 1:
        raise CamsegError(f"--batch-size must be at least 1, got {batch_size}")
    dev = resolve_device(device, "--device")
    run_precision = predict_precision(precision, dev)
    batch_size = batch_size or auto_batch_size(dev)
    images = expand_inputs(inputs)
    mf = read_model_file(model_path)
    names = _output_names(images, out)
    inputs_resolved = {p.resolve() for p in images}
    for name in names:
        for fmt in formats:
            target = (out / f"{name}_{_SUFFIX[fmt]}.png").resolve()
            if target in inputs_resolved:
                raise CamsegError(f"output {target} would overwrite an input; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CamsegError(f"--out {out}: cannot create the folder ({e.strerror})") from None
    if not _writable(out):
        raise CamsegError(f"--out {out}: folder is not writable")

    # channels_last: oneDNN and cuDNN both run these convolutions faster in NHWC (1.5x on CPU).
    model = mf.build().to(dev).eval().to(memory_format=torch.channels_last)
    model = run_precision.apply(model, dev)
    if tta:
        model = FlipTTA(model)
    palette = _palette(mf.codes)
    result = PredictResult()
    # On a CPU the network's own threads use every core; more decoding threads only preempt them.
    workers = 4 if dev.type == "cuda" else 1
    for batch in _batches(images, batch_size, workers):
        good = [(i, arr) for i, arr, err in batch if arr is not None]
        for i, arr, err in batch:
            if arr is None:
                result.skipped.append((images[i], err or "unreadable"))
                log.warning("skipped %s: %s", images[i], err)
                if on_image is not None:
                    on_image(None)
        if not good:
            continue
        xb = torch.stack([to_model_input(arr, mf) for _, arr in good]).to(dev)
        with torch.inference_mode():
            logits = model(xb.contiguous(memory_format=torch.channels_last))
        for (i, arr), lg in zip(good, logits, strict=True):
            record = _write(
                images[i], names[i], arr, _mask(lg, arr), palette, mf.codes, out, formats
            )
            result.written.append(record)
            if on_image is not None:
                on_image(record)
    return result


def _mask(logits: torch.Tensor, rgb: np.ndarray) -> np.ndarray:
    """Class scores at the model's size -> class indices at the image's own size: the scores
    are upsampled (bilinear), then the argmax is taken at full resolution."""
    h, w = rgb.shape[:2]
    if (h, w) != tuple(logits.shape[-2:]):
        logits = F.interpolate(logits[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    return logits.argmax(dim=0).byte().cpu().numpy()


_SUFFIX = {"index": "mask", "color": "color", "overlay": "overlay"}


def _writable(folder: Path) -> bool:
    probe = folder / ".camseg-write-test"
    try:
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False


def _palette(codes: list[str]) -> np.ndarray:
    from camseg.plots import palette

    return palette(codes)


def _write(
    image: Path,
    name: str,
    rgb: np.ndarray,
    mask: np.ndarray,
    palette: np.ndarray,
    codes: list[str],
    out: Path,
    formats: tuple[str, ...],
) -> dict:
    files = {}
    if "index" in formats:
        files["index"] = out / f"{name}_mask.png"
        _save_png(files["index"], Image.fromarray(mask, "L"))
    colour = palette[mask]
    if "color" in formats:
        files["color"] = out / f"{name}_color.png"
        _save_png(files["color"], Image.fromarray(colour, "RGB"))
    if "overlay" in formats:
        files["overlay"] = out / f"{name}_overlay.png"
        blend = (rgb.astype(np.uint16) + colour.astype(np.uint16)) // 2
        _save_png(files["overlay"], Image.fromarray(blend.astype(np.uint8), "RGB"))
    counts = np.bincount(mask.ravel(), minlength=len(codes))
    total = mask.size
    return {
        "image": str(image),
        "size": [int(mask.shape[0]), int(mask.shape[1])],
        "outputs": {k: str(v) for k, v in files.items()},
        "shares": {c: round(int(n) / total, 6) for c, n in zip(codes, counts, strict=True) if n},
    }

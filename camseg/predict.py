"""Batched inference on image files -> index masks, CamVid-coloured masks and overlays at each
input's own resolution. Reads anything PIL reads (RGBA, grey, 16-bit, EXIF-rotated) up to
MAX_PIXELS; a file that cannot be read is reported and skipped, the others are still written.
Memory per image is its decoded pixels (4 bytes each) and its index mask (1 byte each): scores,
colours and overlays at full resolution are made in row bands.

Needs only model.pth: no training config, no pickle.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, PngImagePlugin

from camseg.atomic import atomic_write
from camseg.data.files import IMAGE_SUFFIXES, load_rgb, natural_key
from camseg.errors import CamsegError
from camseg.model import ModelFile, read_model_file, resolve_device
from camseg.precision import PREDICT_DEFAULT, PredictPrecision, predict_precision

FORMATS = ("index", "color", "overlay")
_SUFFIX = {"index": "mask", "color": "color", "overlay": "overlay"}

# Pillow warns above 89 and refuses above 179 megapixels (its decompression-bomb guard); predict
# takes photos up to this size instead, checked from the header before decoding, and skips a
# bigger file with that reason. At the limit a photo needs 1 GB (see the module docstring).
MAX_PIXELS = 200_000_000
# Full-resolution class scores take 4 bytes x classes a pixel (128 B with CamVid's 32 classes):
# up to ONE_PIECE_BYTES (4 MP) they are upsampled in one F.interpolate call, a bigger image in
# row bands of BAND_BYTES, so that memory follows the model's size, not the photo's.
ONE_PIECE_BYTES = 512 * 2**20
BAND_BYTES = 32 * 2**20
# Decode the next batch while the network runs this one, unless this one is already this big.
AHEAD_PIXELS = 50_000_000
# PNG text on every file predict writes, so that a later folder expansion can tell them apart.
SOFTWARE = "camseg"


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


def to_model_input(im: Image.Image, mf: ModelFile) -> torch.Tensor:
    """What fastai's valid pipeline does: squish-resize (bilinear), scale to [0, 1], normalise."""
    h, w = mf.size
    if im.size != (w, h):
        im = im.resize((w, h), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(mf.mean).view(3, 1, 1)
    std = torch.tensor(mf.std).view(3, 1, 1)
    return (x - mean) / std


@dataclass
class Inputs:
    images: list[Path]
    own_outputs: list[Path]  # camseg's own earlier outputs that a folder or pattern held


def expand_inputs(inputs: list[str]) -> Inputs:
    """Files as given; a folder -> its images; a glob pattern -> its matches (sorted). A folder
    or pattern leaves out what predict wrote there before (see `_is_own_output`); a file named
    on its own is always taken. A path that does not exist is an error."""
    found: list[Path] = []
    own: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(
                (p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                key=lambda p: natural_key(p.name),
            )
            if not files:
                raise CamsegError(f"{path}: folder has no images ({', '.join(IMAGE_SUFFIXES)})")
        elif path.exists():
            found.append(path)
            continue
        elif not any(c in item for c in "*?["):
            raise CamsegError(f"{item}: no such file or folder")
        else:
            files = [p for p in sorted(map(Path, glob.glob(item, recursive=True))) if p.is_file()]
            if not files:
                raise CamsegError(f"{item}: pattern matches no files")
        mine = {p for p in files if _is_own_output(p)}
        own += sorted(mine, key=files.index)
        found += [p for p in files if p not in mine]
    if not found:
        raise CamsegError(
            f"no input images given (left out {len(own)} earlier camseg output(s); name one "
            "to segment it)"
            if own
            else "no input images given"
        )
    return Inputs(found, own)


def _is_own_output(path: Path) -> bool:
    """A `<name>_mask|_color|_overlay.png` that predict wrote: it carries camseg's PNG text. The
    name alone is not enough, a user's own `x_color.png` is an input like any other."""
    if not path.name.endswith(tuple(f"_{s}.png" for s in _SUFFIX.values())):
        return False
    try:
        with _pixel_limit_checked_here(), Image.open(path) as im:
            return im.format == "PNG" and im.info.get("Software") == SOFTWARE
    except Exception:  # not readable as an image: an input, and reported as unreadable later
        return False


@dataclass
class PredictResult:
    written: list[dict] = field(default_factory=list)  # one record per image
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    renamed: list[tuple[Path, str]] = field(default_factory=list)  # input -> its output name


def _output_names(images: list[Path]) -> list[str]:
    """<stem>; an input whose stem an earlier one took gets <stem>-2, -3, ..., never a stem that
    another input of the call has (dupA/x-2.png and a second x.png). Compared without case,
    as macOS and Windows file systems do."""
    stems = {p.stem.casefold() for p in images}
    taken: set[str] = set()
    names = []
    for p in images:
        name, k = p.stem, 1
        while name.casefold() in taken or (k > 1 and name.casefold() in stems):
            k += 1
            name = f"{p.stem}-{k}"
        taken.add(name.casefold())
        names.append(name)
    return names


def _save_png(path: Path, im: Image.Image) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", SOFTWARE)
    atomic_write(path, lambda f: im.save(f, format="PNG", pnginfo=info))


@contextlib.contextmanager
def _pixel_limit_checked_here() -> Iterator[None]:
    """Pillow's decompression-bomb check off (its warning would reach the user raw): `_read`
    checks MAX_PIXELS itself, from the header, before decoding."""
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def _read(path: Path) -> Image.Image:
    """The upright RGB image. A plain 8-bit RGB file (a JPEG photo) is decoded straight into the
    one image predict works on, 4 bytes a pixel; any other mode goes through load_rgb, whose
    copies of a 100-megapixel photo would take another 1.5 GB."""
    with Image.open(path) as im:
        w, h = im.size
        if w * h > MAX_PIXELS:
            raise CamsegError(
                f"{w}x{h} is {w * h / 1e6:.0f} megapixels, over predict's limit of "
                f"{MAX_PIXELS // 10**6} (a guard against decompression bombs)"
            )
        if im.mode == "RGB":
            im.load()
            ImageOps.exif_transpose(im, in_place=True)
            return im
    return Image.fromarray(load_rgb(path))


def _decode(path: Path) -> tuple[Image.Image | None, str | None]:
    try:
        return _read(path), None
    except CamsegError as e:
        return None, str(e)
    except Exception as e:  # unreadable, truncated, not an image: report and go on
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()


Decoded = list[tuple[int, Image.Image | None, str | None]]


def _batches(images: list[Path], batch_size: int, workers: int) -> Iterator[Decoded]:
    """Decode in a thread pool (PIL releases the GIL), one batch ahead of the network unless the
    batch in hand already holds AHEAD_PIXELS: a second huge photo waiting would double the
    memory."""
    starts = range(0, len(images), batch_size)
    with ThreadPoolExecutor(max_workers=workers) as pool:

        def submit(k: int) -> list:
            if k >= len(starts):
                return []
            idx = range(starts[k], min(starts[k] + batch_size, len(images)))
            return [(i, pool.submit(_decode, images[i])) for i in idx]

        pending = submit(0)
        for k in range(len(starts)):
            current = [(i, *fut.result()) for i, fut in pending]
            pixels = sum(im.width * im.height for _, im, _ in current if im is not None)
            pending = submit(k + 1) if pixels <= AHEAD_PIXELS else []
            yield current
            if pixels > AHEAD_PIXELS:
                pending = submit(k + 1)


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
    images = expand_inputs(inputs).images
    mf = read_model_file(model_path)
    names = _output_names(images)
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
    mf = dataclasses.replace(mf, state_dict={})  # the model holds the weights now (0.2 GB less)
    model = run_precision.apply(model, dev)
    if tta:
        model = FlipTTA(model)
    palette = _palette(mf.codes)
    result = PredictResult()
    result.renamed = [(p, n) for p, n in zip(images, names, strict=True) if n != p.stem]

    def segment(batch: Decoded) -> None:
        good = [(i, im) for i, im, _ in batch if im is not None]
        for i, im, err in batch:
            if im is None:
                result.skipped.append((images[i], err or "unreadable"))
                if on_image is not None:
                    on_image(None)
        if not good:
            return
        xb = torch.stack([to_model_input(im, mf) for _, im in good]).to(dev)
        with torch.inference_mode():
            logits = model(xb.contiguous(memory_format=torch.channels_last))
        for (i, im), lg in zip(good, logits, strict=True):
            mask = _mask(lg, im.height, im.width)
            record = _write(images[i], names[i], im, mask, palette, mf.codes, out, formats)
            result.written.append(record)
            if on_image is not None:
                on_image(record)

    # On a CPU the network's own threads use every core; more decoding threads only preempt them.
    workers = 4 if dev.type == "cuda" else 1
    with _pixel_limit_checked_here():
        for batch in _batches(images, batch_size, workers):
            segment(batch)
            batch.clear()  # its photos go before the next batch is decoded (400 MB at 100 MP)
    return result


def _mask(logits: torch.Tensor, h: int, w: int) -> np.ndarray:
    """Class scores at the model's size -> class indices at the image's size h x w: the scores
    are upsampled (bilinear), then the argmax is taken at full resolution; in one piece up to
    ONE_PIECE_BYTES of scores (as predict always did), else in bands."""
    if (h, w) == tuple(logits.shape[-2:]):
        return logits.argmax(dim=0).byte().cpu().numpy()
    n_classes = logits.shape[0]
    if 4 * n_classes * h * w <= ONE_PIECE_BYTES:
        logits = F.interpolate(logits[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        return logits.argmax(dim=0).byte().cpu().numpy()
    return _mask_in_bands(logits, h, w, rows=max(1, BAND_BYTES // (4 * n_classes * w)))


def _mask_in_bands(logits: torch.Tensor, h: int, w: int, rows: int) -> np.ndarray:
    """`_mask`, `rows` output rows at a time. Bilinear upsampling is separable: F.interpolate
    widens just the source rows a band needs (each row on its own, so a slice gives the same
    numbers), then each output row blends its two source rows with the weights F.interpolate
    uses for the full height. Every pixel's arithmetic is the same whatever the band, so the
    mask does not depend on `rows`; against one F.interpolate call over the whole image the
    scores differ by float rounding only (that kernel sums in another order, and differently
    again for channels-last input), which can move the argmax only where two classes score
    within about 1e-6 of each other."""
    n_classes, src_h, src_w = logits.shape
    src = logits.float().contiguous()
    top, bottom, w_top, w_bottom = (
        torch.from_numpy(a).to(logits.device) for a in _source_rows(src_h, h)
    )
    mask = np.empty((h, w), np.uint8)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        s0, s1 = int(top[r0]), int(bottom[r1 - 1]) + 1
        wide = F.interpolate(
            src[:, s0:s1].reshape(1, -1, src_w), size=w, mode="linear", align_corners=False
        ).view(n_classes, s1 - s0, w)
        band = wide.index_select(1, top[r0:r1] - s0).mul_(w_top[r0:r1, None])
        band += wide.index_select(1, bottom[r0:r1] - s0).mul_(w_bottom[r0:r1, None])
        # argmax's rule (the first maximum), but max's kernel: 5x faster over the first dim
        mask[r0:r1] = band.max(dim=0).indices.byte().cpu().numpy()
    return mask


def _source_rows(n_in: int, n_out: int) -> tuple[np.ndarray, ...]:
    """For each output row of a bilinear resize from n_in to n_out rows (align_corners=False):
    its two source rows and their weights, as ATen computes them: source = scale * (i + 0.5) -
    0.5 in float32 with one rounding (ATen's FMA), clamped to the first and last row."""
    scale = np.float32(n_in) / np.float32(n_out)
    source = np.maximum(scale * (np.arange(n_out) + 0.5) - 0.5, 0).astype(np.float32)
    top = np.minimum(source.astype(np.int64), n_in - 1)
    w_bottom = np.clip(source - top, 0, 1).astype(np.float32)
    bottom = np.minimum(top + 1, n_in - 1)
    return top, bottom, (1 - w_bottom).astype(np.float32), w_bottom


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
    im: Image.Image,
    mask: np.ndarray,
    palette: np.ndarray,
    codes: list[str],
    out: Path,
    formats: tuple[str, ...],
) -> dict:
    """Write the formats asked for and return the image's record. The photo's own pixels are
    the canvas, overwritten band by band with the overlay, then the colour mask: no second
    full-size image (a 100-megapixel RGB image is 400 MB in PIL)."""
    files = {}
    h, w = mask.shape
    rows = max(1, 2**20 // w)  # a megapixel a band: 30 MB of temporaries
    bands = [(r0, min(h, r0 + rows)) for r0 in range(0, h, rows)]
    if "index" in formats:
        files["index"] = out / f"{name}_mask.png"
        _save_png(files["index"], Image.fromarray(mask, "L"))
    if "overlay" in formats:
        files["overlay"] = out / f"{name}_overlay.png"
        for r0, r1 in bands:
            rgb = np.asarray(im.crop((0, r0, w, r1)), dtype=np.uint16)
            blend = (rgb + palette[mask[r0:r1]]) // 2
            im.paste(Image.fromarray(blend.astype(np.uint8), "RGB"), (0, r0))
        _save_png(files["overlay"], im)
    if "color" in formats:
        files["color"] = out / f"{name}_color.png"
        for r0, r1 in bands:
            im.paste(Image.fromarray(palette[mask[r0:r1]], "RGB"), (0, r0))
        _save_png(files["color"], im)
    counts = sum(np.bincount(mask[r0:r1].ravel(), minlength=len(codes)) for r0, r1 in bands)
    total = mask.size
    return {
        "image": str(image),
        "size": [int(mask.shape[0]), int(mask.shape[1])],
        "outputs": {k: str(v) for k, v in files.items()},
        "shares": {c: round(int(n) / total, 6) for c, n in zip(codes, counts, strict=True) if n},
    }

"""Batched inference on image files -> index masks, CamVid-coloured masks and overlays at each
input's own resolution. Reads anything PIL reads (RGBA, grey, 16-bit, EXIF-rotated) up to
MAX_PIXELS; a file that cannot be read is reported and skipped, the others are still written.
Memory per image is its decoded pixels (4 bytes each) and its index mask (1 byte each): scores,
colours and overlays at full resolution are made in row bands.

Needs only model.pth (or an exported model.onnx): no training config, no pickle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from camseg.config.values import PredictPrecision
from camseg.core.atomic import require_writable
from camseg.core.device import cpu_has_amx, resolve_device
from camseg.core.precision import PREDICT_DEFAULT, predict_precision
from camseg.data.files import open_rgb
from camseg.errors import CamsegError
from camseg.infer.api import MAX_PIXELS, Segmenter, overlay
from camseg.infer.inputs import expand_inputs
from camseg.infer.network import read_model, runtime_for
from camseg.infer.onnx_runtime import NAMES, installed, pick_runtime
from camseg.infer.outputs import (
    FORMATS,
    LEGEND,
    OUTPUT_SUFFIX,
    auto_batch_size,
    check_request,
    class_shares,
    legend_to_write,
    refuse_earlier_outputs,
    save_png,
    unique_names,
)
from camseg.model.onnx_file import (
    INT8_AGREEMENT,
    RUNTIMES,
    is_onnx,
    read_onnx_file,
    run_int8_file,
)

# Decode the next batch while the network runs this one, unless this one is already this big.
AHEAD_PIXELS = 50_000_000


def fastest_model(
    source: Path, device: str, precision: str, runtime: str = "auto"
) -> tuple[Path, str | None]:
    """What `camseg predict` runs for a model file at --precision auto: on a CPU without AMX
    the run's int8 export, when `camseg export --int8` wrote one and the runtime that would run
    it (pick_runtime: OpenVINO when installed, else ONNX Runtime) met INT8_AGREEMENT at export;
    else the file itself (in bf16 where the CPU has native bf16, else fp32). Measured
    (docs/benchmarks.md): int8 beat bf16 on a Zen 4 with AVX512-BF16 and fp32 everywhere; bf16
    beat int8 only with AMX. The second value says which file, in one line, when it is not the
    one asked for."""
    if precision != "auto" or is_onnx(source) or not any(map(installed, RUNTIMES)):
        return source, None
    int8 = run_int8_file(source)
    if int8 is None or resolve_device(device, "--device").type != "cpu" or cpu_has_amx():
        return source, None
    info = read_onnx_file(int8)
    name = pick_runtime(info, runtime)
    agreement = (info.int8_agreement or {}).get(name)
    if agreement is None or agreement < INT8_AGREEMENT:
        return source, None
    return int8, (
        f"predicting with {int8}: int8 on {NAMES[name]}, {agreement:.2%} of its mask pixels "
        f"as in fp32 at export (the fastest on a CPU without AMX; --precision fp32 or bf16 runs "
        f"{source.name})"
    )


@dataclass
class PredictResult:
    written: list[dict] = field(default_factory=list)  # one record per image
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    renamed: list[tuple[Path, str]] = field(default_factory=list)  # input -> its output name


def _decode(path: Path) -> tuple[Image.Image | None, str | None]:
    try:
        return open_rgb(path, MAX_PIXELS), None
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
    exist_ok: bool = False,
    tune_process: bool = False,
    runtime: str = "auto",
) -> PredictResult:
    """Segment images; write the requested formats under `out` at each input's resolution.
    An output that exists already is an error unless exist_ok (then it is replaced)."""
    check_request(formats, batch_size)
    dev = resolve_device(device, "--device")
    predict_precision(precision, dev)  # a precision this device cannot run: before any work
    batch_size = batch_size or auto_batch_size(dev)
    images = expand_inputs(inputs).images
    mf = read_model(model_path)  # model.pth, checkpoint or exported model.onnx
    runtime_for(mf, runtime)  # a runtime that cannot run it: before any work
    names = unique_names([p.stem for p in images], {p.stem for p in images})
    inputs_resolved = {p.resolve() for p in images}
    targets = [out / f"{name}_{OUTPUT_SUFFIX[fmt]}.png" for name in names for fmt in formats]
    for target in targets:
        if target.resolve() in inputs_resolved:
            raise CamsegError(
                f"output {target.resolve()} would overwrite an input; choose another --out"
            )
    refuse_earlier_outputs(targets, exist_ok)
    legend = legend_to_write(out, mf, formats, exist_ok)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CamsegError(f"--out {out}: cannot create the folder ({e.strerror})") from None
    require_writable(out, "--out")

    seg = Segmenter(
        mf,
        device=device,
        precision=precision,
        tta=tta,
        tune_process=tune_process,
        runtime=runtime,
    )
    del mf  # the network holds the weights now (0.2 GB less)
    codes, palette = seg.classes, seg.colors
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
        nonlocal legend
        masks = seg.masks([im for _, im in good])
        if legend is not None:  # with the first coloured output: a failed call writes nothing
            save_png(out / LEGEND, legend)
            legend = None
        for (i, im), mask in zip(good, masks, strict=True):
            record = _write(images[i], names[i], im, mask, palette, codes, out, formats)
            result.written.append(record)
            if on_image is not None:
                on_image(record)

    # On a CPU the network's own threads use every core; more decoding threads only preempt them.
    workers = 4 if dev.type == "cuda" else 1
    for batch in _batches(images, batch_size, workers):
        segment(batch)
        batch.clear()  # its photos go before the next batch is decoded (400 MB at 100 MP)
    return result


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
        save_png(files["index"], Image.fromarray(mask, "L"))
    if "overlay" in formats:
        files["overlay"] = out / f"{name}_overlay.png"
        for r0, r1 in bands:
            blend = overlay(np.asarray(im.crop((0, r0, w, r1))), palette[mask[r0:r1]])
            im.paste(Image.fromarray(blend, "RGB"), (0, r0))
        save_png(files["overlay"], im)
    if "color" in formats:
        files["color"] = out / f"{name}_color.png"
        for r0, r1 in bands:
            im.paste(Image.fromarray(palette[mask[r0:r1]], "RGB"), (0, r0))
        save_png(files["color"], im)
    counts = sum(np.bincount(mask[r0:r1].ravel(), minlength=len(codes)) for r0, r1 in bands)
    return {
        "image": str(image),
        "size": [int(mask.shape[0]), int(mask.shape[1])],
        "outputs": {k: str(v) for k, v in files.items()},
        "shares": class_shares(counts, codes),
    }

"""`camseg evaluate` and `camseg predict`: use a trained model (by default the newest finished
run under ./runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from camseg.cli.app import (
    Command,
    DeviceOpt,
    ModelOpt,
    QuietOpt,
    RunOpt,
    RuntimeOpt,
    WeightsOpt,
    app,
    choices,
    err,
    model_source,
    out,
    print_json,
    quiet_mode,
    shows_progress,
    user_errors,
)
from camseg.config.schema import Layout
from camseg.config.values import EvaluatePrecision, PredictPrecision, Split, parse_size
from camseg.errors import CamsegError
from camseg.infer.inputs import Inputs
from camseg.infer.outputs import FORMATS

SplitChoice = choices("SplitChoice", Split)
LayoutChoice = choices("LayoutChoice", Layout)
EvaluatePrecisionChoice = choices("EvaluatePrecisionChoice", EvaluatePrecision)
PredictPrecisionChoice = choices("PredictPrecisionChoice", PredictPrecision)


@app.command("evaluate", cls=Command)
@user_errors
def evaluate(
    run: RunOpt = None,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    data: Annotated[
        Path | None, typer.Option(help="Another dataset folder with the same classes.")
    ] = None,
    layout: Annotated[
        LayoutChoice | None, typer.Option(help="Layout of --data (default camvid).")
    ] = None,
    split: Annotated[SplitChoice, typer.Option(help="Which images to score.")] = "valid",  # type: ignore[assignment]
    size: Annotated[
        str, typer.Option(help="model (the training size), native (labels at full size) or HxW.")
    ] = "model",
    tta: Annotated[
        bool, typer.Option("--tta/--no-tta", help="Flip test-time augmentation.")
    ] = False,
    device: DeviceOpt = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 8,
    precision: Annotated[
        EvaluatePrecisionChoice,
        typer.Option(
            help="train (as training validated, recorded in the model file; fp32 where that "
            "cannot run here), fp32, fp16 (CUDA) or bf16."
        ),
    ] = "train",  # type: ignore[assignment]
    runtime: RuntimeOpt = "auto",  # type: ignore[assignment]
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Folder to write the evaluation's folder in (default: RUN/eval, or eval/ "
            "beside --model).",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Only metrics.json on stdout.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Score a trained model on a dataset split: acc_camvid, pixel accuracy, mIoU, per class."""
    quiet_mode(quiet or json_out)
    if size not in ("model", "native"):
        size = parse_size(size)  # type: ignore[assignment]
    if batch_size < 1:
        raise CamsegError(f"--batch-size must be at least 1, got {batch_size}")
    source = model_source(run, model, weights)
    if data is not None:
        from camseg.data.layouts import EVALUATE_OPTIONS, require_root

        require_root(data, EVALUATE_OPTIONS)
    # mistakes above are answered before torch is imported (5 s)
    from camseg.infer.evaluate import REFERENCES
    from camseg.infer.evaluate import evaluate as run_eval

    result = run_eval(
        source,
        data=data,
        layout=layout.value if layout else None,  # type: ignore[arg-type]
        split=split.value,  # type: ignore[arg-type]
        size=size,
        tta=tta,
        device=device,
        batch_size=batch_size,
        precision=precision.value,  # type: ignore[arg-type]
        out=out_dir,
        tune_process=True,  # this process is the command's own
        runtime=runtime.value,
    )
    if json_out:
        print_json(json.loads((result.out_dir / "metrics.json").read_text(encoding="utf-8")))
    ev = result.evaluated
    if ev["precision_note"]:
        err.print(f"camseg: note: {ev['precision_note']}", soft_wrap=True)
    table = Table(
        "class",
        "IoU",
        "precision",
        "recall",
        "pixel share",
        title=f"{ev['data']} / {ev['split']} ({ev['n_images']} images, {ev['precision']}; "
        f"{Path(ev['model']).name}" + (f", {ev['weights']} weights)" if ev["weights"] else ")"),
    )
    for row in result.per_class:
        if row["present"] and row["scored"]:
            table.add_row(
                row["class"],
                *(f"{row[k]:.4f}" for k in ("iou", "precision", "recall", "pixel_share")),
            )
    out.print(table)
    s = result.scores
    out.print(
        Text.assemble(
            "acc_camvid ",
            (f"{s.acc_camvid:.4f}", "bold"),
            f"  pixel accuracy (Void counted) {s.pixel_acc:.4f}  mIoU {s.miou:.4f}",
        ),
        soft_wrap=True,
    )
    if result.without_tta is not None:
        w = result.without_tta
        out.print(
            f"TTA (flip) changed acc_camvid by {s.acc_camvid - w.acc_camvid:+.4f}, "
            f"mIoU by {s.miou - w.miou:+.4f} (without: {w.acc_camvid:.4f} / {w.miou:.4f})",
            soft_wrap=True,
        )
    for ref in REFERENCES:
        out.print(
            f"  for reference, not comparable: {ref['acc_camvid']:.4f} {ref['source']} "
            f"({ref['setting']})",
            soft_wrap=True,
            style="dim",
        )
    out.print(f"wrote {result.out_dir}", soft_wrap=True)


@app.command("predict", cls=Command)
@user_errors
def predict(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Image files, folders or glob patterns; or videos: files, image-sequence "
            "patterns (frames/f_%05d.png) or stream URLs (needs camseg\\[video]).",
            metavar="INPUTS",
        ),
    ],
    run: RunOpt = None,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Output folder (default: a new RUN_DIR/predictions, predictions-2, ...)."
        ),
    ] = None,
    exist_ok: Annotated[
        bool,
        typer.Option(
            "--exist-ok",
            help="Replace outputs of the same names in --out (else an error).",
        ),
    ] = False,
    batch_size: Annotated[
        int | None, typer.Option(help="Images per batch (default: 16 on CUDA, 1 on CPU).")
    ] = None,
    tta: Annotated[
        bool, typer.Option("--tta/--no-tta", help="Flip test-time augmentation.")
    ] = False,
    device: DeviceOpt = "auto",
    precision: Annotated[
        PredictPrecisionChoice,
        typer.Option(
            help="auto (fp16 on CUDA, bf16 on CPUs with native bf16, else fp32), fp32, bf16 or "
            "fp16 (CUDA)."
        ),
    ] = "auto",  # type: ignore[assignment]
    runtime: RuntimeOpt = "auto",  # type: ignore[assignment]
    format_: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="Comma list of index, color, overlay (default: all three for images, overlay "
            "for videos).",
        ),
    ] = None,
    json_lines: Annotated[bool, typer.Option("--json", help="A JSON line per image.")] = False,
    stride: Annotated[
        int, typer.Option(help="Videos: segment every N-th frame (the others keep the last mask).")
    ] = 1,
    quiet: QuietOpt = False,
) -> None:
    """Write segmentation masks for images at their own resolution."""
    quiet_mode(quiet)
    from PIL import Image

    from camseg.infer.inputs import expand_inputs
    from camseg.infer.outputs import LEGEND
    from camseg.infer.video_io import is_video_source

    # this process is the command's own: predict checks each image's pixels against its own
    # limit from the header (MAX_PIXELS, 200 MP), so Pillow's check (a warning from 89 MP, an
    # error from 179 MP) is off, and camseg's inference settings are on (tune_process)
    Image.MAX_IMAGE_PIXELS = None
    source = model_source(run, model, weights)
    options: dict[str, Any] = dict(
        batch_size=batch_size,
        tta=tta,
        device=device,
        precision=precision.value,
        exist_ok=exist_ok,
        tune_process=True,
        runtime=runtime.value,
    )
    videos = any(is_video_source(item) for item in inputs)
    if not videos and stride != 1:
        raise CamsegError("--stride is for video inputs; give a video, or leave --stride out")
    formats = _formats(format_ or ("overlay" if videos else "index,color,overlay"))
    # a mistyped path is answered before torch is imported
    expanded = None if videos else expand_inputs(inputs)
    from camseg.infer.predict import fastest_model  # the run's int8 export, where it is faster

    source, chosen = fastest_model(source, device, precision.value, runtime.value)
    if chosen is not None:
        err.print(f"camseg: {chosen}", soft_wrap=True)
    new_dir = out_dir is None
    if out_dir is None:  # a folder of its own for each call: earlier outputs stay as they were
        from camseg.core.runs import create_run_dir, predictions_dir

        default = predictions_dir(source)
        out_dir = create_run_dir(default.parent, default.name)
    try:
        if expanded is None:
            _predict_videos(inputs, source, out_dir, formats, stride, json_lines, **options)
        else:
            _predict_images(expanded, source, out_dir, formats, json_lines, **options)
    except BaseException:
        if new_dir and out_dir.is_dir() and {p.name for p in out_dir.iterdir()} <= {LEGEND}:
            (out_dir / LEGEND).unlink(missing_ok=True)  # nothing segmented: no folder left
            out_dir.rmdir()
        raise


def _predict_images(
    expanded: Inputs,
    source: Path,
    out_dir: Path,
    formats: tuple[str, ...],
    json_lines: bool,
    **options: Any,
) -> None:
    """`predict` for images: a progress bar past 5 images, notes on left-out and renamed
    inputs, exit 1 when an input could not be read (the others are written)."""
    from rich.progress import Progress

    from camseg.infer.predict import predict as run_predict

    n = len(expanded.images)
    if expanded.own_outputs:
        err.print(
            f"camseg: note: left out {len(expanded.own_outputs)} file(s) that camseg predict "
            f"wrote earlier (e.g. {expanded.own_outputs[0]}); name a file to segment it",
            soft_wrap=True,
        )
    with Progress(console=err, disable=n <= 5 or json_lines or not shows_progress()) as bar:
        task = bar.add_task("predicting", total=n)

        def on_image(record: dict | None) -> None:
            bar.advance(task)
            _json_line(record, json_lines)

        result = run_predict(
            [str(p) for p in expanded.images],
            source,
            out_dir,
            formats=formats,
            on_image=on_image,
            **options,
        )
    if result.renamed:
        shown = ", ".join(f"{path} -> {name}" for path, name in result.renamed[:3])
        more = f" and {len(result.renamed) - 3} more" if len(result.renamed) > 3 else ""
        err.print(
            f"camseg: note: {len(result.renamed)} input(s) share a name with an earlier one; "
            f"their outputs are named {shown}{more}",
            soft_wrap=True,
        )
    for path, reason in result.skipped:
        err.print(f"camseg: skipped {path}: {reason}", soft_wrap=True)
    if not json_lines:
        out.print(f"wrote {len(result.written)} image(s) to {out_dir}", soft_wrap=True)
    if result.skipped:
        err.print(f"camseg: error: {len(result.skipped)} of {n} input(s) could not be read")
        raise typer.Exit(1)


def _json_line(record: dict | None, json_lines: bool) -> None:
    """With --json, an image's or a segmented frame's record as one line on stdout."""
    if record is not None and json_lines:
        print_json(record)


def _formats(text: str) -> tuple[str, ...]:
    formats = tuple(f.strip() for f in text.split(",") if f.strip())
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise CamsegError(f"--format {text}: a comma list of {', '.join(FORMATS)}")
    return formats


def _predict_videos(
    inputs: list[str],
    source: Path,
    out_dir: Path,
    formats: tuple[str, ...],
    stride: int,
    json_lines: bool,
    **options: Any,
) -> None:
    """`predict` for video sources: a progress bar with frames/s per video, a summary line each,
    exit 1 when a video could not be read to its end (what was read is written)."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from camseg.infer.video import predict_videos
    from camseg.infer.video_io import VideoInfo

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(
        *columns,
        TextColumn("{task.fields[rate]}"),
        console=err,
        disable=json_lines or not shows_progress(),
    ) as bar:
        task = bar.add_task("", total=None, rate="")
        started = time.perf_counter()

        def on_video(info: VideoInfo) -> None:
            nonlocal started
            bar.reset(task, total=info.frames, description=info.name, rate="")
            started = time.perf_counter()

        def on_frame(index: int, record: dict | None) -> None:
            rate = (index + 1) / max(time.perf_counter() - started, 1e-9)
            bar.update(task, completed=index + 1, rate=f"{rate:.2f} frames/s")
            _json_line(record, json_lines)

        results = predict_videos(
            inputs,
            source,
            out_dir,
            formats=formats,
            stride=stride,
            on_video=on_video,
            on_frame=on_frame,
            **options,
        )
    failed = 0
    for r in results:
        wrote = ", ".join(p.name for p in r.outputs.values()) or "nothing"
        (err if json_lines else out).print(
            f"{r.info.source}: {r.frames} frames ({r.segmented} segmented) in {r.seconds:.1f} s, "
            f"{r.frames_per_second:.2f} frames/s; wrote {wrote} to {out_dir}",
            soft_wrap=True,
        )
        if r.error is not None:
            failed += 1
            kept = f"wrote the {r.frames} frame(s) before it" if r.frames else "nothing written"
            err.print(f"camseg: error: {r.info.source}: {r.error}; {kept}", soft_wrap=True)
    if failed:
        raise typer.Exit(1)

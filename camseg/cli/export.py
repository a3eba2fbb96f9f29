"""`camseg export`: a trained model as one self-contained ONNX file (camseg/export.py), which
`camseg predict` and `camseg evaluate` take as --model, and ONNX Runtime runs without fastai."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from camseg.cli.app import (
    Command,
    QuietOpt,
    RunOpt,
    WeightsOpt,
    app,
    choices,
    model_source,
    out,
    print_json,
    quiet_mode,
    user_errors,
)

ExportFormat = Literal["onnx"]
ExportFormatChoice = choices("ExportFormatChoice", ExportFormat)


@app.command("export", cls=Command)
@user_errors
def export(
    run: RunOpt = None,
    model: Annotated[
        Path | None,
        typer.Option("--model", help="model.pth or a checkpoint file instead of --run."),
    ] = None,
    weights: WeightsOpt = None,
    format_: Annotated[
        ExportFormatChoice, typer.Option("--format", help="What to write.")
    ] = "onnx",  # type: ignore[assignment]
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="File to write; never overwritten (default RUN/model.onnx, or model-2.onnx, "
            "-3, ... when that exists).",
        ),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="What was written, as one JSON document.")
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Export a trained model to ONNX: weights, classes, colours, size and normalisation."""
    quiet_mode(quiet or json_out)
    from camseg.export import export_onnx

    source = model_source(run, model, weights)
    result = export_onnx(source, out_file)
    h, w = result.size
    size_mb = result.path.stat().st_size / 1e6
    if json_out:
        print_json(
            {
                "path": str(result.path),
                "model": str(source),
                "bytes": result.path.stat().st_size,
                "size": [h, w],
                "classes": result.n_classes,
                "max_abs_diff": result.max_abs_diff,
                "seconds": round(result.seconds, 1),
            }
        )
    out.print(
        f"wrote {result.path} ({size_mb:.0f} MB; {h}x{w} input, batch of any size, "
        f"{result.n_classes} classes; ONNX Runtime's scores within {result.max_abs_diff:.1e} "
        f"of PyTorch's; {result.seconds:.0f} s)",
        soft_wrap=True,
    )

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
    err,
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
    int8: Annotated[
        bool,
        typer.Option(
            "--int8",
            help="Quantize to int8 (ONNX Runtime static quantization, calibrated on the run's "
            "training frames; default RUN/model-int8.onnx), for CPUs without native bf16.",
        ),
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="What was written, as one JSON document.")
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Export a trained model to ONNX: weights, classes, colours, size and normalisation."""
    quiet_mode(quiet or json_out)
    from camseg.export import export_onnx, int8_frames
    from camseg.model.onnx_file import INT8_AGREEMENT

    source = model_source(run, model, weights)
    result = export_onnx(source, out_file, int8=int8_frames(source) if int8 else None)
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
                **(
                    {
                        "int8_agreement": result.int8.agreement,
                        "int8_agreement_openvino": result.int8.agreement_openvino,
                        "calibration_frames": result.int8.calibration_frames,
                        "check_frames": result.int8.check_frames,
                    }
                    if result.int8
                    else {}
                ),
            }
        )
    if result.int8 is None:
        check = f"ONNX Runtime's scores within {result.max_abs_diff:.1e} of PyTorch's"
    else:
        q = result.int8
        on_openvino = (
            f" (OpenVINO: {q.agreement_openvino:.2%})" if q.agreement_openvino is not None else ""
        )
        check = (
            f"int8, calibrated on {q.calibration_frames} training frames; "
            f"{q.agreement:.2%} of mask pixels as in fp32 on {q.check_frames} validation frames"
            f"{on_openvino}"
        )
    out.print(
        f"wrote {result.path} ({size_mb:.0f} MB; {h}x{w} input, batch of any size, "
        f"{result.n_classes} classes; {check}; {result.seconds:.0f} s)",
        soft_wrap=True,
    )
    if (
        result.int8 is not None
        and max(result.int8.agreement, result.int8.agreement_openvino or 0.0) < INT8_AGREEMENT
    ):
        err.print(
            f"camseg: note: below the {INT8_AGREEMENT:.0%} agreement that predict asks of an "
            f"int8 file, so it keeps using the fp32 model by default; give --model "
            f"{result.path} to run this one",
            soft_wrap=True,
        )

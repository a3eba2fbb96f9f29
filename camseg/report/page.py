"""RUN_DIR/report.html: one page with the config, the per-epoch table (beside the paper's Fig. 13
for runs of half.yaml / full.yaml, the recipe it measures), every plot (the predictions with a
legend of the classes they show), links to the run's lr-find folders, every evaluation with its
model file and weights, and the newest one in full (per-class IoU, confusion heatmap).

Images are linked relative to the run folder, so the folder can be moved or zipped whole.
"""

from __future__ import annotations

import csv
import html
import json
import re
import shlex
from pathlib import Path

from camseg.core.atomic import atomic_write_text
from camseg.core.runs import Run
from camseg.data.files import resource_path
from camseg.report.plots import legend_file

PAPER_SOURCE = (
    "H. Gupta, \u201cImage Segmentation Using Deep Learning\u201d, Fig. 13: full-size stage, "
    "full CamVid, ImageNet-pretrained ResNet34 U-Net, Colab GPU"
)

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f2f2f2; } td.l, th.l { text-align: left; }
.side { display: flex; gap: 2em; flex-wrap: wrap; align-items: flex-start; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.3em 0; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.85em; }
.note { color: #666; font-size: 0.85em; }
.legend span { display: inline-block; margin: 0 1.2em 0.3em 0; font-size: 0.9em; }
.legend i { display: inline-block; width: 1em; height: 1em; margin-right: 0.3em;
            border: 1px solid #666; vertical-align: middle; }
"""


def _read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _table(rows: list[dict], columns: list[str], caption: str = "") -> str:
    if not rows:
        return "<p class='note'>none yet</p>"
    head = "".join(f"<th class='l'>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in columns) + "</tr>"
        for r in rows
    )
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<tr>{head}</tr>{body}</table>"


def _img(run_dir: Path, rel: str, alt: str) -> str:
    if not (run_dir / rel).is_file():
        return ""
    return f"<figure><img src='{html.escape(rel)}' alt='{html.escape(alt)}'></figure>"


def _fmt(v: object, digits: int = 4) -> str:
    return f"{v:.{digits}f}" if isinstance(v, float) else ("" if v is None else str(v))


PAPER_PRESETS = ("half", "full")  # the paper's two phases: the runs its Fig. 13 can stand beside


def config_name(run: Run) -> str | None:
    """The name of the config file a run was started with (its command.txt), e.g. half."""
    try:
        argv = shlex.split(run.command.read_text(encoding="utf-8").splitlines()[0])
    except (OSError, IndexError, ValueError):
        return None
    for flag in ("--config", "-c"):
        if flag in argv[:-1]:
            return Path(argv[argv.index(flag) + 1]).stem
    return None


def lr_find_folders(run: Run) -> list[Path]:
    """`camseg lr-find` folders beside the run, for its config: <name>-lr_find[-k]."""
    name = config_name(run) or re.sub(r"-\d+$", "", run.dir.name)
    pattern = re.compile(rf"^{re.escape(name)}-lr_find(-\d+)?$")
    parent = run.dir.parent
    return sorted(p for p in parent.iterdir() if p.is_dir() and pattern.match(p.name))


def write_report(run_dir: Path) -> Path:
    """(Re)write RUN_DIR/report.html from what the run folder holds now."""
    run = Run(run_dir)
    history = _read_csv(run.history)
    for row in history:
        for k in ("train_loss", "valid_loss", "acc_camvid", "miou"):
            row[k] = _fmt(float(row[k]), 6 if k != "miou" else 4)
        row["seconds"] = _fmt(float(row["seconds"]), 1)
    paper = _read_csv(resource_path("paper_fig13.csv"))
    summary = json.loads(run.summary.read_text()) if run.finished else {}  # whole, or none
    config = run.config.read_text() if run.config.is_file() else ""

    parts = [f"<h1>camseg run: {html.escape(run_dir.name)}</h1>"]
    if summary:
        parts.append(
            f"<p>best acc_camvid <b>{_fmt(summary.get('best_acc_camvid'))}</b> "
            f"({html.escape(str(summary.get('best_stage')))}, epoch {summary.get('best_epoch')}); "
            f"{summary.get('epochs')} epochs, {_fmt(summary.get('seconds_per_epoch'), 1)} s/epoch, "
            f"{_fmt(summary.get('images_per_second'), 1)} images/s</p>"
        )
    parts.append("<h2>Per-epoch results</h2><div class='side'>")
    parts.append(
        "<div><h3>this run</h3>"
        + _table(
            history,
            ["stage_name", "epoch", "train_loss", "valid_loss", "acc_camvid", "miou", "seconds"],
        )
        + "</div>"
    )
    if config_name(run) in PAPER_PRESETS:
        parts.append(
            "<div><h3>the paper's (Fig. 13)</h3>"
            + _table(paper, ["epoch", "train_loss", "valid_loss", "acc_camvid", "time"])
            + f"<p class='note'>{html.escape(PAPER_SOURCE)}</p></div></div>"
        )
    else:
        parts.append(
            "</div><p class='note'>The paper's Fig. 13 table is shown beside runs of half.yaml "
            "and full.yaml, the recipe it measures; this run's config is another.</p>"
        )
    lr_plots = sorted(run.plots.glob("lr_find_*.png"))
    finder = lr_find_folders(run)
    parts.append(
        f"<h2>{'Learning rate finder, s' if lr_plots or finder else 'S'}chedule and losses</h2>"
    )
    for p in lr_plots:
        parts.append(_img(run_dir, f"plots/{p.name}", p.stem))
    if finder:
        links = "".join(
            f"<li><a href='../{html.escape(p.name)}/lr_find.png'>{html.escape(p.name)}</a></li>"
            for p in finder
        )
        parts.append(f"<p>camseg lr-find runs beside this run:</p><ul>{links}</ul>")
    for name, alt in (("schedule", "lr and momentum schedule"), ("loss", "losses")):
        parts.append(_img(run_dir, f"plots/{name}.png", alt))
    parts.append("<h2>Image / ground truth / prediction</h2>")
    parts.append(_img(run_dir, "plots/results.png", "validation predictions"))
    parts.append(_legend(_read_csv(legend_file(run.plots / "results.png"))))
    parts.append(_eval_section(run_dir))
    parts.append(f"<h2>Config</h2><pre>{html.escape(config)}</pre>")
    page = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>camseg {html.escape(run_dir.name)}</title><style>{CSS}</style></head><body>"
        + "\n".join(p for p in parts if p)
        + "</body></html>\n"
    )
    atomic_write_text(run.report, page)
    return run.report


def _legend(entries: list[dict]) -> str:
    """Colour swatch and name of each class the predictions figure shows."""
    if not entries:
        return ""
    items = "".join(
        f"<span><i style='background:{html.escape(e['colour'])}'></i>"
        f"{html.escape(e['class'])}</span>"
        for e in entries
    )
    return f"<p class='legend'>{items}</p>"


def _evaluations(run_dir: Path, found: list[Path]) -> str:
    """Every evaluation of the run, oldest first: which model file, which weights, what data."""
    rows = []
    for path in found:
        try:
            m = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        ev = m.get("evaluated", {})
        rows.append(
            {
                "folder": path.parent.relative_to(run_dir).as_posix(),
                "model file": Path(str(ev.get("model"))).name,
                "weights": ev.get("weights") or "",
                "data": Path(str(ev.get("data"))).name,
                "split": ev.get("split"),
                "precision": ev.get("precision"),
                "acc_camvid": _fmt(m.get("acc_camvid")),
                "mIoU": _fmt(m.get("miou")),
            }
        )
    columns = ["folder", "model file", "weights", "data", "split", "precision"]
    return _table(rows, [*columns, "acc_camvid", "mIoU"], "every evaluation, oldest first")


def _eval_section(run_dir: Path) -> str:
    found = Run(run_dir).eval_metrics()
    if not found:
        return (
            "<h2>Evaluation</h2><p class='note'>not evaluated yet: "
            f"camseg evaluate --run {html.escape(str(run_dir))}</p>"
        )
    folder = found[-1].parent
    m = json.loads((folder / "metrics.json").read_text())
    rel = folder.relative_to(run_dir).as_posix()
    ev = m.get("evaluated", {})
    weights = f", {ev['weights']} weights" if ev.get("weights") else ""
    rows = [
        {
            "class": r["class"],
            "iou": _fmt(r["iou"]),
            "precision": _fmt(r["precision"]),
            "recall": _fmt(r["recall"]),
            "pixel share": _fmt(r["pixel_share"]),
        }
        for r in m["per_class"]
        if r["present"] and r["scored"]
    ]
    refs = "".join(
        f"<li>{r['acc_camvid']:.4f}: {html.escape(r['source'])} ({html.escape(r['setting'])})</li>"
        for r in m.get("references", [])
    )
    return (
        "<h2>Evaluations</h2>"
        + _evaluations(run_dir, found)
        + f"<h3>The newest: {html.escape(rel)}</h3>"
        f"<p>model {html.escape(str(ev.get('model')))}{html.escape(weights)}; "
        f"{html.escape(str(ev.get('data')))}, split {html.escape(str(ev.get('split')))}, "
        f"{ev.get('n_images')} images, size {html.escape(str(ev.get('size')))}: "
        f"acc_camvid <b>{_fmt(m['acc_camvid'])}</b>, pixel accuracy {_fmt(m['pixel_acc'])}, "
        f"mIoU {_fmt(m['miou'])}</p>"
        f"<p class='note'>Published numbers, for orientation only (other data and weights):"
        f"</p><ul class='note'>{refs}</ul><div class='side'><div>"
        + _table(
            rows,
            ["class", "iou", "precision", "recall", "pixel share"],
            "per class (present, non-Void)",
        )
        + "</div><div>"
        + _img(run_dir, f"{rel}/confusion.png", "confusion matrix")
        + "</div></div>"
    )

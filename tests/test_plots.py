"""The predictions figure's legend: exactly the classes its ground truth and predictions show."""

from __future__ import annotations

import numpy as np
from PIL import Image

import camseg.report.plots
from camseg.data.files import camvid_palette
from camseg.report.plots import plot_grid, present_classes

CODES = ["Animal", "Road", "Sky", "Tree", "Void"]


def test_present_classes_are_those_in_truth_or_prediction():
    truth = np.array([[[1, 1], [4, 4]]], dtype=np.uint8)
    pred = np.array([[[1, 3], [3, 4]]], dtype=np.uint8)
    assert present_classes(truth, pred) == [1, 3, 4]  # 0 and 2 in neither
    assert present_classes(None, pred) == [1, 3, 4]
    assert present_classes(truth, None) == [1, 4]


def test_grid_legend_names_the_classes_shown(tmp_path, monkeypatch):
    images = np.zeros((2, 8, 12, 3), dtype=np.uint8)
    truths = np.full((2, 8, 12), 1, dtype=np.uint8)
    truths[1, :4] = 4
    preds = np.full((2, 8, 12), 2, dtype=np.uint8)
    drawn: list[tuple[list[str], list[tuple[float, ...]]]] = []
    save = camseg.report.plots._save

    def spy(fig, path):
        (legend,) = fig.legends
        names = [t.get_text() for t in legend.get_texts()]
        colours = [tuple(h.get_facecolor()[:3]) for h in legend.legend_handles]
        drawn.append((names, colours))
        save(fig, path)

    monkeypatch.setattr(camseg.report.plots, "_save", spy)
    out = tmp_path / "results.png"
    assert plot_grid(images, truths, preds, CODES, out, ["a.png", "b.png"]) == [1, 2, 4]
    names, colours = drawn[0]
    assert names == ["Road", "Sky", "Void"]
    pal = camvid_palette(CODES)
    assert np.allclose(colours, pal[[1, 2, 4]] / 255)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.height > 100

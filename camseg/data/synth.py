"""Procedural street scenes labelled with the 32 CamVid codes, written in the camvid layout.

Sky, buildings with windows, trees, road with lane markings, sidewalks, poles, signs, traffic
lights, cars, trucks, pedestrians and bicyclists at random positions and perspective scales,
with per-object colours, texture noise and lighting. Object outlines are labelled Void, as
annotators leave uncertain boundaries. The same seed gives the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from camseg.core.atomic import require_folder_path
from camseg.data.files import (
    new_dataset_folder,
    read_codes,
    resource_path,
    write_codes_and_split,
)
from camseg.errors import CamsegError

Box = tuple[float, float, float, float]


class _Canvas:
    """Draws each shape twice: colour into the photo, class index into the label."""

    def __init__(self, h: int, w: int, codes: list[str], rng: np.random.Generator) -> None:
        self.h, self.w, self.rng = h, w, rng
        self.index = {c: i for i, c in enumerate(codes)}
        self.photo = Image.new("RGB", (w, h))
        self.label = Image.new("L", (w, h), self.index["Void"])
        self.pd = ImageDraw.Draw(self.photo)
        self.ld = ImageDraw.Draw(self.label)
        self.outlines: list[tuple[str, object]] = []

    def jitter(self, rgb: tuple[int, int, int], amount: int = 25) -> tuple[int, int, int]:
        d = self.rng.integers(-amount, amount + 1, size=3)
        return tuple(int(np.clip(c + x, 0, 255)) for c, x in zip(rgb, d, strict=True))  # type: ignore[return-value]

    def rect(self, box: Box, cls: str, rgb: tuple[int, int, int], outline: bool = True) -> None:
        self.pd.rectangle(box, fill=rgb)
        self.ld.rectangle(box, fill=self.index[cls])
        if outline:
            self.outlines.append(("rect", box))

    def ellipse(self, box: Box, cls: str, rgb: tuple[int, int, int], outline: bool = True) -> None:
        self.pd.ellipse(box, fill=rgb)
        self.ld.ellipse(box, fill=self.index[cls])
        if outline:
            self.outlines.append(("ellipse", box))

    def polygon(self, pts: list[tuple[float, float]], cls: str, rgb: tuple[int, int, int]) -> None:
        self.pd.polygon(pts, fill=rgb)
        self.ld.polygon(pts, fill=self.index[cls])

    def void_outlines(self) -> None:
        void = self.index["Void"]
        for kind, box in self.outlines:
            if kind == "rect":
                self.ld.rectangle(box, outline=void)  # type: ignore[arg-type]
            else:
                self.ld.ellipse(box, outline=void)  # type: ignore[arg-type]


def _sky(c: _Canvas, horizon: int) -> None:
    top = np.array(c.jitter((90, 140, 210), 30), dtype=np.float32)
    bottom = np.array(c.jitter((200, 215, 230), 20), dtype=np.float32)
    t = np.linspace(0, 1, horizon, dtype=np.float32)[:, None, None]
    grad = (top * (1 - t) + bottom * t).repeat(c.w, axis=1)
    c.photo.paste(Image.fromarray(grad.astype(np.uint8)), (0, 0))
    c.ld.rectangle((0, 0, c.w, horizon), fill=c.index["Sky"])


def _buildings(c: _Canvas, horizon: int) -> None:
    x = -c.rng.integers(0, c.w // 8)
    while x < c.w:
        bw = int(c.rng.integers(c.w // 8, c.w // 3))
        top = int(c.rng.integers(int(c.h * 0.03), max(int(c.h * 0.05) + 1, horizon - c.h // 10)))
        base = c.jitter((150, 120, 100), 50)
        cls = "Building" if c.rng.random() > 0.1 else "Wall"
        c.rect((x, top, x + bw, horizon + 2), cls, base, outline=False)
        win = tuple(max(0, v - 70) for v in base)
        step = max(4, bw // 6)
        for wy in range(top + 3, horizon - 4, step):
            for wx in range(x + 2, x + bw - 4, step):
                if c.rng.random() < 0.7:
                    c.pd.rectangle((wx, wy, wx + step // 2, wy + step // 2), fill=win)  # type: ignore[arg-type]
        x += bw


def _ground(c: _Canvas, horizon: int) -> tuple[float, float]:
    vx = c.w * c.rng.uniform(0.35, 0.65)
    left, right = c.w * c.rng.uniform(-0.4, 0.1), c.w * c.rng.uniform(0.9, 1.4)
    c.rect((0, horizon, c.w, c.h), "Sidewalk", c.jitter((170, 165, 160), 20), outline=False)
    road = [(vx - 2, horizon), (vx + 2, horizon), (right, c.h), (left, c.h)]
    c.polygon(road, "Road", c.jitter((95, 95, 100), 15))
    # Dashed centre line converging on the vanishing point.
    mark = c.jitter((235, 235, 225), 10)
    bottom_x = (left + right) / 2 + c.rng.uniform(-0.1, 0.1) * c.w
    n = 8
    for i in range(0, n, 2):
        t0, t1 = (i / n) ** 1.6, ((i + 1) / n) ** 1.6
        y0, y1 = horizon + t0 * (c.h - horizon), horizon + t1 * (c.h - horizon)
        x0, x1 = vx + t0 * (bottom_x - vx), vx + t1 * (bottom_x - vx)
        hw0, hw1 = 0.5 + t0 * c.w * 0.012, 0.5 + t1 * c.w * 0.012
        c.polygon(
            [(x0 - hw0, y0), (x0 + hw0, y0), (x1 + hw1, y1), (x1 - hw1, y1)], "LaneMkgsDriv", mark
        )
    return left, right


def _scale(c: _Canvas, y: float, horizon: int) -> float:
    return max(0.08, (y - horizon) / max(1, c.h - horizon))


def _tree(c: _Canvas, x: float, y: float, s: float) -> None:
    trunk_h, crown = c.h * 0.25 * s, c.h * 0.18 * s + 3
    c.rect((x - 1 - s * 2, y - trunk_h, x + 1 + s * 2, y), "Tree", c.jitter((90, 60, 35), 15))
    c.ellipse(
        (x - crown, y - trunk_h - crown * 1.4, x + crown, y - trunk_h + crown * 0.4),
        "Tree",
        c.jitter((60, 120, 50), 30),
    )


def _pole(c: _Canvas, x: float, y: float, s: float) -> None:
    height = c.h * 0.45 * s + 6
    c.rect((x - 0.5 - s, y - height, x + 0.5 + s, y), "Column_Pole", c.jitter((110, 110, 110), 20))
    r = 2 + 4 * s
    if c.rng.random() < 0.5:
        c.ellipse(
            (x - r, y - height - 2 * r, x + r, y - height), "SignSymbol", c.jitter((200, 40, 40))
        )
    else:
        c.rect(
            (x - r * 0.6, y - height - 2.4 * r, x + r * 0.6, y - height),
            "TrafficLight",
            (25, 25, 25),
        )


def _car(c: _Canvas, x: float, y: float, s: float) -> None:
    kind = c.rng.choice(["Car", "Car", "Car", "SUVPickupTruck", "Truck_Bus"])
    w = c.w * {"Car": 0.3, "SUVPickupTruck": 0.34, "Truck_Bus": 0.45}[kind] * s + 6
    h = w * {"Car": 0.45, "SUVPickupTruck": 0.6, "Truck_Bus": 0.75}[kind]
    body = c.jitter(tuple(int(v) for v in c.rng.integers(20, 235, size=3)), 0)  # type: ignore[arg-type]
    c.rect((x - w / 2, y - h, x + w / 2, y - h * 0.15), kind, body)
    glass = (40, 50, 60)
    c.pd.rectangle((x - w * 0.35, y - h * 0.92, x + w * 0.35, y - h * 0.62), fill=glass)
    r = h * 0.17
    for wx in (x - w * 0.3, x + w * 0.3):
        c.ellipse((wx - r, y - 2 * r, wx + r, y), kind, (20, 20, 20))


def _person(c: _Canvas, x: float, y: float, s: float, bike: bool) -> None:
    h = c.h * 0.35 * s + 6
    cls = "Bicyclist" if bike else "Pedestrian"
    cloth = c.jitter(tuple(int(v) for v in c.rng.integers(20, 235, size=3)), 0)  # type: ignore[arg-type]
    if bike:
        r = h * 0.2
        for wx in (x - h * 0.3, x + h * 0.3):
            c.ellipse((wx - r, y - 2 * r, wx + r, y), cls, (30, 30, 30))
        y -= r
    c.rect((x - h * 0.12, y - h * 0.8, x + h * 0.12, y), cls, cloth)
    head = h * 0.1
    c.ellipse((x - head, y - h, x + head, y - h + 2 * head), cls, c.jitter((220, 180, 150), 30))


def render(
    h: int, w: int, codes: list[str], rng: np.random.Generator
) -> tuple[Image.Image, Image.Image]:
    """One scene: (RGB photo, L label of class indices)."""
    c = _Canvas(h, w, codes, rng)
    horizon = int(h * rng.uniform(0.35, 0.55))
    _sky(c, horizon)
    _buildings(c, horizon)
    left, right = _ground(c, horizon)

    props = []  # (y, draw) sorted back to front so near objects cover far ones
    for _ in range(rng.integers(1, 5)):
        y = rng.uniform(horizon + 2, h)
        side = rng.choice([-1, 1])
        x = rng.uniform(0, max(1, left)) if side < 0 else rng.uniform(min(w - 1, right), w)
        if rng.random() < 0.5:
            x = rng.uniform(0, w)
            y = rng.uniform(horizon + 2, horizon + (h - horizon) * 0.3)
        props.append((y, _tree if rng.random() < 0.6 else _pole, x))
    for _ in range(rng.integers(0, 4)):
        y = rng.uniform(horizon + (h - horizon) * 0.15, h)
        t = (y - horizon) / (h - horizon)
        x = rng.uniform(w * 0.5 + (left - w * 0.5) * t, w * 0.5 + (right - w * 0.5) * t)
        props.append((y, _car, x))
    for _ in range(rng.integers(0, 4)):
        y = rng.uniform(horizon + 3, h)
        props.append((y, "bike" if rng.random() < 0.3 else "walk", rng.uniform(0, w)))
    for y, draw, x in sorted(props, key=lambda p: p[0]):
        s = _scale(c, y, horizon)
        if draw in ("bike", "walk"):
            _person(c, x, y, s, bike=draw == "bike")
        else:
            draw(c, x, y, s)
    c.void_outlines()

    photo = np.asarray(c.photo.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float32)
    photo = photo * rng.uniform(0.7, 1.2) + rng.normal(0, rng.uniform(4, 12), photo.shape)
    return Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)), c.label


def generate(
    out: Path, *, n: int, size: tuple[int, int], seed: int, valid_fraction: float = 0.2
) -> Path:
    """Write n scenes to out/images, out/labels, out/codes.txt and out/valid.txt (the last ones)."""
    if n < 4:
        raise CamsegError(f"--n must be at least 4 (some to train, some to validate), got {n}")
    h, w = size
    if min(h, w) < 32:
        raise CamsegError(f"--size must be at least 32x32, got {h}x{w}")
    if not 0 < valid_fraction < 1:
        raise CamsegError(f"--valid-fraction must be between 0 and 1, got {valid_fraction}")
    n_valid = max(1, round(n * valid_fraction))
    if n_valid >= n:
        raise CamsegError(
            f"--valid-fraction {valid_fraction} of {n} scenes leaves no train scene; "
            "use a smaller fraction"
        )
    require_folder_path(out, "--out", "give a new folder for the scenes")
    codes = read_codes(resource_path("codes.txt"))
    with new_dataset_folder(out) as tmp:
        names = []
        for i in range(n):
            photo, label = render(h, w, codes, np.random.default_rng([seed, i]))
            name = f"synth_{i:05d}"
            photo.save(tmp / "images" / f"{name}.png")
            label.save(tmp / "labels" / f"{name}_P.png")
            names.append(f"{name}.png")
        write_codes_and_split(tmp, codes, names[-n_valid:])
    return out

"""fastai's learning-rate finder, made safe for any curve: its four suggestions are computed
one by one, so one that a short or diverging curve cannot give is reported as missing (with
why) instead of ending the run in a traceback; and a progress line every few seconds for a
console that shows no bar.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from fastai.callback.core import Callback
from fastai.callback.schedule import minimum, slide, steep, valley

# fastai's suggestion functions, in the order fastai's docs list them. `minimum` suggests a
# tenth of the lr at the lowest loss.
SUGGESTERS: dict[str, Callable[..., Any]] = {
    "valley": valley,
    "slide": slide,
    "minimum": minimum,
    "steep": steep,
}

OnIter = Callable[[int, int, float], None]  # iterations done, of how many, smoothed loss


@dataclass
class Suggestions:
    """The suggested lrs (None where one could not be computed), the (lr, loss) point each
    marks on the curve, and why a missing one is missing."""

    lrs: dict[str, float | None]
    points: dict[str, tuple[float, float]] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)


def suggest(recorded_lrs: list, recorded_losses: list, num_it: int) -> Suggestions:
    """fastai lr_find's suggestions from the recorded curve, cut as lr_find cuts it (the
    first tenth and the last five iterations, and from the first NaN on), each on its own."""
    lrs = torch.tensor([float(x) for x in recorded_lrs][num_it // 10 : -5])
    losses = torch.tensor([float(x) for x in recorded_losses][num_it // 10 : -5])
    nan = torch.nonzero(torch.isnan(losses)).flatten()
    if len(nan):
        lrs, losses = lrs[: int(nan[0])], losses[: int(nan[0])]
    out = Suggestions(lrs={})
    for name, fn in SUGGESTERS.items():
        out.lrs[name] = None
        if len(losses) < 3:
            out.missing[name] = (
                f"the curve has {len(losses)} usable points (the loss diverged early or "
                f"train.lr_find_iters is small)"
            )
            continue
        try:
            lr, (x, y) = fn(lrs, losses, num_it)
        except (IndexError, ValueError, RuntimeError) as e:
            out.missing[name] = f"{type(e).__name__} on a curve of {len(losses)} points"
            continue
        if not math.isfinite(float(lr)) or float(lr) <= 0:
            out.missing[name] = f"it gave {float(lr)}"
            continue
        out.lrs[name] = float(lr)
        out.points[name] = (float(x), float(y))
    return out


class LrFindProgress(Callback):
    """Calls `on_iter(done, total, smoothed loss)` for the first iteration, then at most every
    `every` seconds, and once at the end (also when the loss diverged and lr_find stopped)."""

    order = 55  # after the Recorder smooths the loss, before LRFinder may stop the fit

    def __init__(self, total: int, on_iter: OnIter, every: float = 10.0) -> None:
        self.total, self.on_iter, self.every = total, on_iter, every
        self.last = -math.inf
        self.said = 0

    def after_batch(self) -> None:
        if not self.training:
            return
        done = self.learn.train_iter
        if self.said == 0 or time.monotonic() - self.last >= self.every:
            self._say(done)

    def after_fit(self) -> None:
        done = self.learn.train_iter
        if done != self.said:
            self._say(done)

    def _say(self, done: int) -> None:
        self.on_iter(done, self.total, float(self.learn.smooth_loss))
        self.last, self.said = time.monotonic(), done

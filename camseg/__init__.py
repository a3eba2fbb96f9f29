"""camseg: U-Net semantic segmentation of urban driving scenes (CamVid / CamSeq01) on fastai."""

from typing import TYPE_CHECKING, Any

from camseg.core import __version__
from camseg.errors import CamsegError

if TYPE_CHECKING:
    from camseg.infer.api import Segmenter

__all__ = ["CamsegError", "Segmenter", "__version__"]


def __getattr__(name: str) -> Any:
    # Segmenter on first use: `import camseg` (and so the CLI's start) does not load torch
    if name == "Segmenter":
        from camseg.infer.api import Segmenter

        return Segmenter
    raise AttributeError(f"module 'camseg' has no attribute {name!r}")

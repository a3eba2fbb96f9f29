"""camseg: U-Net semantic segmentation of urban driving scenes (CamVid / CamSeq01) on fastai."""

from typing import TYPE_CHECKING, Any

from camseg.errors import CamsegError

if TYPE_CHECKING:
    from camseg.api import Segmenter

__version__ = "0.1.0"
__all__ = ["CamsegError", "Segmenter", "__version__"]


def __getattr__(name: str) -> Any:
    # Segmenter on first use: `import camseg` (and so the CLI's start) does not load torch
    if name == "Segmenter":
        from camseg.api import Segmenter

        return Segmenter
    raise AttributeError(f"module 'camseg' has no attribute {name!r}")

"""camseg: U-Net semantic segmentation of urban driving scenes (CamVid / CamSeq01) on fastai."""

from camseg.errors import CamsegError

__version__ = "0.1.0"
__all__ = ["CamsegError", "__version__"]

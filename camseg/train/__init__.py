"""The train floor: `camseg train` and `lr-find` from their entry points (entry.py) through the
staged recipe (trainer.py) and its fastai callbacks, checkpoints, losses, EMA and TensorBoard.
It never imports camseg.infer, nor camseg.infer it."""

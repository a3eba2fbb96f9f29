"""The core floor: what every verb shares below data and model: device and precision choice, the
metrics, atomic writes, the run folder, the machine a run records, the inference heap policy."""

__version__ = "0.1.0"

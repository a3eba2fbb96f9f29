"""Shared fixtures: the real data in ../shared/data (read in place, never copied into the repo)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from helpers import SHARED_DATA, copy_or_link, fast_args, small_copy
from typer.testing import CliRunner


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.fail(f"test data missing: {path} (the tests read ../shared/data beside the repo)")
    return path


@pytest.fixture(scope="session")
def camvid_tiny() -> Path:
    return _shared("camvid_tiny")


@pytest.fixture(scope="session")
def camseq01_sample() -> Path:
    return _shared("camseq01_sample")


@pytest.fixture(scope="session")
def camvid_small(camvid_tiny: Path, tmp_path_factory) -> Path:
    """camvid_tiny cut to 4 validation and 32 training frames (4 batches of 8), read-only: for
    the tests that stop, kill or break a training run, whose behaviour needs epochs of a few
    batches, not 85 frames (each of their epochs took 7 s, now 2-3 s)."""
    return small_copy(camvid_tiny, tmp_path_factory.mktemp("camvid_small") / "d", 4, 32)


@pytest.fixture
def tiny_copy(camvid_tiny: Path, tmp_path: Path) -> Path:
    """A writable copy of camvid_tiny in a temp folder, for injecting faults."""
    dst = tmp_path / "camvid_tiny"
    shutil.copytree(camvid_tiny, dst)
    return dst


@pytest.fixture
def cli():
    """Run the CLI in-process; returns a function(args) -> click Result."""
    from camseg.cli import app

    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return run


def _stamps(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, camvid_tiny):
    """One short real training run shared by the tests that only read its outputs. A test whose
    commands write into a run folder (evaluate, report, predict's default --out) takes run_copy."""
    from camseg.cli import app

    out = tmp_path_factory.mktemp("runs")
    result = CliRunner().invoke(app, ["train", *fast_args(camvid_tiny, out), "--name", "tiny"])
    assert result.exit_code == 0, result.output
    run = out / "tiny"
    before = _stamps(run)
    yield run
    assert _stamps(run) == before, "a test wrote into the shared trained_run; give it run_copy"


@pytest.fixture
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    """A copy of trained_run for one test to write into."""
    return shutil.copytree(trained_run, tmp_path / "run", copy_function=copy_or_link)


def pytest_report_header(config) -> str:
    """Free disk where the temp folders go: a full suite makes several GB of run folders."""
    free = shutil.disk_usage(tempfile.gettempdir()).free / 2**30
    return f"camseg: {free:.1f} GiB free in {tempfile.gettempdir()}"


@pytest.fixture
def network_spy(monkeypatch):
    """What the rebuilt network really runs: per pass through its first convolution, the
    output's dtype, the device and the input's shape."""
    from camseg.model.files import ModelFile

    seen: list[tuple[torch.dtype, str, tuple[int, ...]]] = []
    build = ModelFile.build

    def spying_build(self):
        model = build(self)
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        conv.register_forward_hook(
            lambda _m, inp, out: seen.append((out.dtype, out.device.type, tuple(inp[0].shape)))
        )
        return model

    monkeypatch.setattr(ModelFile, "build", spying_build)
    return seen

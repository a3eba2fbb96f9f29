"""Shared fixtures: the real data in ../shared/data (read in place, never copied into the repo)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


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

"""scripts/wheelhouse.sh and scripts/gpu_check.sh on this machine: the wheelhouse installs
offline beside the venv's torch, and the check's dry run (--device cpu --quick) runs every step
that needs no GPU and reports its numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

REPO = Path(__file__).resolve().parents[1]
# pip's words for an index it cannot reach (as opposed to a resolution that fails)
UNREACHABLE = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "NameResolutionError",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "ConnectTimeoutError",
    "ProxyError",
)


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    """The wheelhouse for this interpreter, resolved around the venv's torch and torchvision."""
    out = tmp_path_factory.mktemp("wheelhouse") / "wheels"
    proc = subprocess.run(
        [
            "bash",
            str(REPO / "scripts" / "wheelhouse.sh"),
            str(out),
            "--python-version",
            f"{sys.version_info.major}.{sys.version_info.minor}",
            "--torch",
            torch.__version__,
            "--torchvision",
            torchvision.__version__,
        ],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    if proc.returncode != 0 and any(s in proc.stderr for s in UNREACHABLE):
        reason = next(
            line for line in proc.stderr.splitlines() if any(s in line for s in UNREACHABLE)
        )
        pytest.skip(f"the package index is unreachable: {reason.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wheels, " in proc.stdout and str(out) in proc.stdout
    return out


def _project(wheel: Path) -> str:
    return wheel.name.split("-")[0].lower().replace("_", "-")


@pytest.mark.slow
def test_wheelhouse_holds_camseg_and_fastai_without_torch(wheelhouse):
    projects = {_project(w) for w in wheelhouse.glob("*.whl")}
    assert {"camseg", "fastai", "fastcore", "pydantic", "typer", "rich", "pyyaml"} <= projects
    assert {"matplotlib", "pillow", "numpy", "scipy", "scikit-learn", "pandas"} <= projects
    assert not {"torch", "torchvision", "triton", "spacy"} & projects
    assert not [p for p in projects if p.startswith("nvidia")]
    plum = next(wheelhouse.glob("plum_dispatch-*.whl")).name.split("-")[1]
    assert tuple(int(v) for v in plum.split(".")[:2]) < (2, 10)  # fastai's pin


@pytest.mark.slow
def test_dry_run_installs_offline_and_runs_every_cpu_step(wheelhouse, camvid_tiny, tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run(
        [
            "bash",
            str(REPO / "scripts" / "gpu_check.sh"),
            "--device",
            "cpu",
            "--quick",
            "--wheels",
            str(wheelhouse),
            "--data",
            str(camvid_tiny),
            "--out",
            str(out),
            "--budget",
            "1500",  # a loaded CI machine, not the 8 minutes meant for a GPU
        ],
        env={**os.environ, "PYTHON": sys.executable, "PIP_NO_INDEX": "1"},
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    failures = out / "failures.log"
    assert proc.returncode == 0, proc.stdout[-2000:] + (
        failures.read_text() if failures.exists() else ""
    )
    summary = json.loads((out / "summary.json").read_text())
    status = {s["step"]: s["status"] for s in summary["steps"]}
    assert status == {
        "install": "ok",
        "env": "ok",
        "train360": "ok",
        "train720": "ok",
        "predict": "ok",
        "data": "ok",
        "precision": "skipped",
        "cudnn": "skipped",
        "compile": "skipped",
    }
    assert summary["ok"] and "all steps ok" in proc.stdout
    numbers = summary["numbers"]
    for step, bs in (("train360", 8), ("train720", 3)):
        train = numbers[step]
        assert train["batch_size"] == bs and train["train_images"] == 12  # the --quick subset
        assert train["camseg_images_per_s"] > 0 and train["plain_fastai_images_per_s"] > 0
    assert numbers["predict"]["camseg_images_per_s"] > 0
    assert numbers["predict"]["learn_predict_images_per_s"] > 0
    assert numbers["data"]["cache_images_per_s"] > 0 and numbers["data"]["frames"] == 12
    env = numbers["env"]
    site = out / "site"
    assert Path(env["fastai_path"]).is_relative_to(site)  # from the wheelhouse ...
    assert Path(env["torch_path"]) == Path(torch.__file__).parent  # ... beside the venv's torch
    assert Path(env["camseg_path"]) == REPO / "camseg"  # the checkout, as it stands

    # Without the checkout on the path, camseg too comes from the installed wheel
    paths = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, camseg, fastai, pydantic, torch; "
            "print(json.dumps([m.__file__ for m in (camseg, fastai, pydantic, torch)]))",
        ],
        env={**os.environ, "PYTHONPATH": str(site)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    camseg_file, fastai_file, pydantic_file, torch_file = map(Path, json.loads(paths.stdout))
    assert all(p.is_relative_to(site) for p in (camseg_file, fastai_file, pydantic_file))
    assert torch_file == Path(torch.__file__)


def test_gpu_check_names_missing_data(tmp_path):
    proc = subprocess.run(
        [
            "bash",
            str(REPO / "scripts" / "gpu_check.sh"),
            "--data",
            str(tmp_path / "nowhere"),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "no camvid_tiny at" in proc.stderr and "nowhere" in proc.stderr


def test_wheelhouse_refuses_a_folder_with_files(tmp_path):
    (tmp_path / "old-1.0-py3-none-any.whl").write_text("")
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "wheelhouse.sh"), str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and "is not empty" in proc.stderr

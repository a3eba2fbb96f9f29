"""camseg.core.atomic: whole files or none, new files never over old ones, the usual modes."""

from __future__ import annotations

import os
import stat

import pytest

from camseg.core.atomic import _umask, atomic_write, atomic_write_new


@pytest.fixture
def umask():
    before = os.umask(0o022)
    os.umask(before)

    def set_umask(mask: int) -> None:
        os.umask(mask)

    yield set_umask
    os.umask(before)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_files_get_the_processes_umask(tmp_path, umask):
    umask(0o077)
    assert _umask() == 0o077 and _umask() == 0o077  # reading it leaves it as it was
    atomic_write(tmp_path / "a.txt", lambda f: f.write(b"a"))
    assert atomic_write_new(tmp_path / "b.onnx", lambda f: f.write(b"b"), number=False)
    assert _mode(tmp_path / "a.txt") == 0o600 and _mode(tmp_path / "b.onnx") == 0o600
    umask(0o022)
    atomic_write(tmp_path / "c.txt", lambda f: f.write(b"c"))
    assert atomic_write_new(tmp_path / "d.onnx", lambda f: f.write(b"d"), number=False)
    assert _mode(tmp_path / "c.txt") == 0o644 and _mode(tmp_path / "d.onnx") == 0o644


def test_a_new_file_never_replaces_an_old_one(tmp_path):
    old = tmp_path / "model.onnx"
    old.write_bytes(b"old")
    assert atomic_write_new(old, lambda f: f.write(b"new"), number=False) is None
    numbered = atomic_write_new(old, lambda f: f.write(b"new"), number=True)
    assert numbered == tmp_path / "model-2.onnx" and numbered.read_bytes() == b"new"
    assert old.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-2.onnx", "model.onnx"]

    def fails(f):
        f.write(b"part")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write_new(tmp_path / "x.onnx", fails, number=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-2.onnx", "model.onnx"]

"""camseg.core.heap: inference on a CPU keeps freed memory for the next pass instead of faulting
it in again (glibc only)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

import camseg.infer.network

# Page faults of allocating and filling 48 MB after 64 MB were freed (both above glibc's largest
# mmap threshold, 32 MB, as a U-Net's full-resolution activations are).
PROBE = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from camseg.core.heap import keep_freed_memory
    assert keep_freed_memory()
    assert keep_freed_memory()  # a second call is harmless
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.empty(16 * 2**20).fill_(1.0)  # 64 MB, freed at once
before = faults()
torch.empty(12 * 2**20).fill_(1.0)  # 48 MB
print(faults() - before)
"""

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")


def _faults(mode: str) -> int:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    return int(proc.stdout.split()[-1])


@glibc
def test_freed_memory_is_reused_without_page_faults():
    default, keep = _faults("default"), _faults("keep")
    # by default glibc unmapped the freed 64 MB and maps the 48 MB afresh: 12,288 pages fault in
    # (fewer with transparent huge pages); kept, the 48 MB come from the freed 64 MB
    assert default > 10 * keep, (default, keep)
    assert keep < 1000


def test_loading_a_network_on_the_cpu_keeps_freed_memory_when_asked(monkeypatch, trained_run):
    calls = []
    monkeypatch.setattr(camseg.infer.network, "keep_freed_memory", lambda: calls.append(1))
    camseg.infer.network.load_network(trained_run, device="cpu")
    assert calls == []  # a library call leaves the process's heap policy alone
    camseg.infer.network.load_network(trained_run, device="cpu", tune_process=True)
    assert calls == [1]

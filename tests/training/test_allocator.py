"""The training allocator setting: real glibc mallopt calls, and what they change."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

from stainbench.training.allocator import reuse_freed_memory

glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="needs glibc"
)


def test_disabled_changes_nothing() -> None:
    with reuse_freed_memory(enabled=False) as applied:
        assert applied is False


@glibc
def test_freed_blocks_are_reused_instead_of_mapped_again() -> None:
    # In a fresh process: allocate, touch and free a 40 MB block, then three more times. With
    # glibc's defaults each is a new mmap whose pages fault in again (~500 minor faults each
    # here, the kernel faults in several pages at a time); inside reuse_freed_memory the
    # later ones reuse the heap block (no faults).
    script = textwrap.dedent(
        """
        import resource, sys, numpy as np
        from stainbench.training.allocator import reuse_freed_memory

        def faults_of_reallocations():
            a = np.ones(10 * 2**20, dtype=np.float32); del a  # 40 MB, touched, freed
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(3):
                a = np.ones(10 * 2**20, dtype=np.float32); del a
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

        system = faults_of_reallocations()
        with reuse_freed_memory() as applied:
            kept = faults_of_reallocations()
        after = faults_of_reallocations()  # defaults restored
        print(applied, system, kept, after)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split()
    applied, system, kept, after = out[0], *map(int, out[1:])
    assert applied == "True"
    assert system >= 300, system
    assert kept <= 10, kept
    assert after >= 300, after

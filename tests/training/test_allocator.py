"""The training allocator setting: real glibc mallopt calls in fresh processes."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="needs glibc"
)

# Allocate, touch and free a 40 MB block, then three more times, counting minor page faults
# before and after keep_freed_memory(). With glibc's defaults each block is a new mmap whose
# pages fault in again; kept, the later blocks reuse the heap and fault nothing in. (How many
# faults a block costs depends on the kernel's huge-page setting: compare, don't count.)
SCRIPT = textwrap.dedent(
    """
    import resource, numpy as np
    from stainbench.training.allocator import keep_freed_memory

    def faults_of_reallocations():
        a = np.ones(10 * 2**20, dtype=np.float32); del a
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(3):
            a = np.ones(10 * 2**20, dtype=np.float32); del a
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    system = faults_of_reallocations()
    applied = keep_freed_memory()
    kept = faults_of_reallocations()
    print(applied, system, kept)
    """
)


def _run(env: dict[str, str]) -> tuple[str, int, int]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    return out[0], int(out[1]), int(out[2])


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop("GLIBC_TUNABLES", None)
    return env


@glibc
def test_freed_blocks_are_reused_instead_of_mapped_again() -> None:
    applied, system, kept = _run(_clean_env())
    assert applied == "True"
    assert system >= 3  # every reallocation faulted its pages in again
    assert kept * 10 < system, (system, kept)


@glibc
@pytest.mark.parametrize(
    ("name", "value"),
    [("MALLOC_TRIM_THRESHOLD_", "1000000"), ("GLIBC_TUNABLES", "glibc.malloc.mmap_max=4")],
)
def test_malloc_settings_of_the_environment_are_left_alone(name: str, value: str) -> None:
    applied, _, _ = _run({**_clean_env(), name: value})
    assert applied == "False"

"""PatchLoader on real stores: the same batches as DataLoader + normalize_batch, bit for bit
and in the same order (0 and 2 workers, fork and spawn, shuffled, across epochs), worker
errors as one line naming the item, and clean shutdown (no shared memory or processes left)."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from stainbench.data.datasets import PairedPatchDataset, UnpairedPatchDataset
from stainbench.data.loader import PatchLoader, fills_batches
from stainbench.data.transforms import normalize_batch
from stainbench.data.writer import write_tile_store
from stainbench.errors import DataError
from stainbench.training.data import EpochIndexed, StepBatches


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (21, 24, 20, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (21, 24, 20, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("loader") / "p.zarr"
    write_tile_store(path, "paired", {"train": {"A": a, "B": b}}, {})
    return path


def _shm() -> set[str]:
    return {p for p in os.listdir("/dev/shm") if p.startswith("psm_")}


def _ours() -> list[str]:
    """Live worker processes of PatchLoader (DataLoader's have other names)."""
    return [p.name for p in mp.active_children() if p.name.startswith("stainbench-loader")]


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.view(torch.int32).clone()


def _reference(ds, **kw) -> list[dict[str, torch.Tensor]]:
    return [
        {k: _bits(v) for k, v in normalize_batch(batch).items()} for batch in DataLoader(ds, **kw)
    ]


def _same(loader: PatchLoader, ref: list[dict[str, torch.Tensor]]) -> None:
    got = [{k: _bits(v) for k, v in batch.items()} for batch in loader]
    assert len(got) == len(ref)
    for g, r in zip(got, ref, strict=True):
        assert g.keys() == r.keys()
        for k in r:
            assert torch.equal(g[k], r[k]), k


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("mode", ["range", "percentile"])
def test_same_batches_as_dataloader(store: Path, workers: int, mode: str) -> None:
    ds = PairedPatchDataset(store, "train", 16, mode, augment=True, seed=5)
    assert fills_batches(ds)
    before = _shm()
    kw = {"batch_size": 4, "shuffle": True}
    ref_gen, gen = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    dl = DataLoader(
        ds, **kw, num_workers=workers, generator=ref_gen, persistent_workers=workers > 0
    )
    refs = [[{k: _bits(v) for k, v in normalize_batch(b).items()} for b in dl] for _ in range(2)]
    with PatchLoader(ds, **kw, num_workers=workers, generator=gen) as loader:
        assert len(loader) == 6  # 21 items, the last batch of 1
        for ref in refs:  # two epochs: the shuffled orders match as well
            _same(loader, ref)
    assert _shm() == before
    assert not _ours()


def test_unpaired_and_training_keys_across_epochs(store: Path) -> None:
    """EpochIndexed + StepBatches (the training loop's sampler) with 2 workers."""
    ds = EpochIndexed(UnpairedPatchDataset(store, "train", 12, "zscore", augment=True, seed=2))
    sampler = StepBatches(len(ds), 5, 2, 0, 10)  # steps cross epoch boundaries
    ref = _reference(ds, batch_sampler=sampler)
    with PatchLoader(ds, 5, batch_sampler=sampler, num_workers=2) as loader:
        _same(loader, ref)


def test_spawn_workers(store: Path) -> None:
    ds = PairedPatchDataset(store, "train", 8, "range", augment=True, seed=1)
    ref = _reference(ds, batch_size=8)
    with PatchLoader(ds, 8, num_workers=2, start_method="spawn") as loader:
        _same(loader, ref)


def test_batches_are_reused_after_the_next_one(store: Path) -> None:
    ds = PairedPatchDataset(store, "train", 8, augment=False)
    loader = PatchLoader(ds, 4)
    it = iter(loader)
    first = next(it)
    kept = first["A"].clone()
    second = next(it)
    assert torch.equal(first["A"], kept)  # still valid while the next batch is used
    assert second["A"].data_ptr() != first["A"].data_ptr()
    third = next(it)
    assert third["A"].data_ptr() == first["A"].data_ptr()  # reused from here on


class _Broken(PairedPatchDataset):
    """Fails on one item (a real dataset, one index rejected)."""

    def fill_batch(self, indices, out) -> None:  # type: ignore[no-untyped-def]
        if 13 in indices:
            raise OSError(f"{self.path}: chunk of tile 13 is corrupt\n(second line)")
        super().fill_batch(indices, out)


@pytest.mark.parametrize("workers", [0, 2])
def test_worker_error_names_the_item(store: Path, workers: int) -> None:
    ds = _Broken(store, "train", 8)
    before = _shm()
    loader = PatchLoader(ds, 4, num_workers=workers)
    err = DataError if workers else OSError
    with pytest.raises(err) as info:
        for _ in loader:
            pass
    msg = str(info.value)
    assert "tile 13 is corrupt" in msg
    if workers:
        assert "\n" not in msg and "item 13" in msg and "batch 3" in msg
    loader.close()
    assert _shm() == before and not _ours()
    # the loader starts new workers for the next iteration
    ok = PatchLoader(PairedPatchDataset(store, "train", 8), 4, num_workers=workers)
    assert sum(int(b["A"].shape[0]) for b in ok) == 21
    ok.close()


def test_early_stop_and_bad_arguments_clean_up(store: Path) -> None:
    ds = PairedPatchDataset(store, "train", 8)
    before = _shm()
    loader = PatchLoader(ds, 4, num_workers=2)
    for i, _ in enumerate(loader):
        if i == 1:
            break  # workers still have batches in flight
    assert _shm() == before and not _ours()
    assert sum(1 for _ in loader) == 6  # restarts cleanly
    loader.close()
    assert _shm() == before and not _ours()
    with pytest.raises(DataError, match="fills whole batches"):
        PatchLoader(list(range(4)), 2)
    with pytest.raises(DataError, match="batch of 5 items"):
        list(PatchLoader(ds, 4, batch_sampler=[[0, 1, 2, 3, 4]]))


@pytest.mark.slow
def test_ctrl_c_and_killed_worker_leave_nothing(store: Path, tmp_path: Path) -> None:
    """Ctrl-C while workers run: the script exits with KeyboardInterrupt, nothing left behind;
    a worker killed mid-run is reported with its exit code."""
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, signal, sys, time
            from stainbench.data.datasets import PairedPatchDataset
            from stainbench.data.loader import PatchLoader
            from stainbench.errors import DataError
            ds = PairedPatchDataset({str(store)!r}, "train", 8)
            loader = PatchLoader(ds, 2, num_workers=2)
            if sys.argv[1] == "kill":
                it = iter(loader)
                next(it)
                os.kill(loader._pool.procs[1].pid, signal.SIGKILL)
                try:
                    for _ in it:
                        pass
                except DataError as exc:
                    print("ERR", exc, flush=True)
                    sys.exit(3)
            print("pids", *[p.pid for p in loader._pool.procs] if loader._pool else [], flush=True)
            while True:
                for _ in loader:
                    print("pids", *[p.pid for p in loader._pool.procs], flush=True)
                    time.sleep(0.05)
            """
        )
    )
    before = _shm()
    killed = subprocess.run(
        [sys.executable, str(script), "kill"], capture_output=True, text=True, timeout=120
    )
    assert killed.returncode == 3, killed.stderr
    assert "exited unexpectedly (exit code -9)" in killed.stdout
    proc = subprocess.Popen(
        [sys.executable, str(script), "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    pids: list[int] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("pids") and len(line.split()) == 3:
            pids = [int(p) for p in line.split()[1:]]
            break
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "KeyboardInterrupt" in stderr
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert _shm() == before


def test_a_new_iteration_replaces_an_unfinished_one(store: Path) -> None:
    ds = PairedPatchDataset(store, "train", 8, augment=True, seed=3)
    ref = _reference(ds, batch_size=4)
    before = _shm()
    loader = PatchLoader(ds, 4, num_workers=2)
    first = iter(loader)
    next(first)  # batches of the first iteration are still in flight
    _same(loader, ref)  # a second iteration starts over with fresh workers
    del first  # the abandoned iteration's clean-up must not stop the new workers
    _same(loader, ref)
    loader.close()
    assert _shm() == before and not _ours()


def test_too_little_shared_memory_is_a_clear_error(tmp_path: Path) -> None:
    from stainbench.data.loader import _check_shm_space

    _check_shm_space(1, 2, 2, str(tmp_path))
    with pytest.raises(DataError, match=r"need \d+ MB of shared memory, .* MB free"):
        _check_shm_space(2**62, 2, 2, str(tmp_path))


def test_without_numba_the_same_batches(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import stainbench.data.augment as augment

    ds = PairedPatchDataset(store, "train", 8, "zscore", augment=True, seed=2)
    ref = _reference(ds, batch_size=8)
    for name in ("transform", "draw", "normalize"):
        monkeypatch.setitem(augment._KERNELS, name, None)
    _same(PatchLoader(ds, 8), ref)

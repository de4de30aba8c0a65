"""Statistics pass over large synthetic volumes: speed against a plain sequential read of the
same files, and peak memory.

For each size (GB of uint16 voxels), a volume store is written with the project's defaults
(chunks 8 x 256 x 256, Blosc LZ4 + byte shuffle): a smooth 2048 x 2048 pattern drifting with
z plus noise, so it compresses like real microscopy rather than like pure noise. Then, with the
store's files evicted from the page cache before each run (``posix_fadvise DONTNEED`` on our
own files only):

1. ``read``: every file of the store read sequentially in 8 MB blocks (Python, one process):
   the plain sequential read speed of the same files (the reference of the target);
2. ``stats``: ``recompute_store_stats`` (what ``stainbench data stats STORE`` runs) in a
   fresh process (one streaming pass: read, decompress, histogram, write the attributes),
   timed twice: the ``recompute_store_stats`` call (``pass``: the compilation of the
   counting kernels included) and the whole process with its interpreter start-up and
   imports (``process``), with its peak RSS from ``/usr/bin/time``; once per variant
   (``--variants``): ``default`` (what ``stainbench data stats`` does: 2 threads per
   CPU core, each reading, decompressing and counting its own blocks), ``threadsN`` (N
   threads), ``procN`` (N spawned worker processes), ``local`` (a local Dask cluster of 2
   worker processes, ``--scheduler local``), and with ``--compare-src DIR`` also ``src``
   (the default pass of another stainbench source tree, e.g. an older commit from
   ``git archive``, for before/after in one run).

The disk's speed drifts by 15-30% from minute to minute on this shared machine, so the
sequence (evict, read, evict, each variant) is repeated ``--repeats`` times and the
medians are reported (with every single time in the JSON). ``ratio_pass`` /
``ratio_process`` = median read time / median stats time (>= 0.8 is the target);
``ratio_pass_paired`` = the median of the per-repeat ratios (each stats run against the
read just before it). The files are deleted afterwards unless ``--keep``.

    .venv/bin/python benchmarks/data_stats_volume.py [--sizes 4,8] [--dir /tmp] [--repeats 3]
        [--variants default,threads2,proc2,local] [--compare-src DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from stainbench.bench.limits import machine_load
from stainbench.data.store import create_store, finalize_store
from stainbench.data.writer import create_volume_array

SIDE = 2048
CHUNKS = (8, 256, 256, 1)


#: where results go unless --out says otherwise (never the committed docs/benchmarks/)
RESULTS_DIR = Path(tempfile.gettempdir()) / "stainbench-benchmarks"


def write_volume(path: Path, gigabytes: float, seed: int = 0) -> tuple[int, ...]:
    """A uint16 (Z, 2048, 2048, 1) volume of about ``gigabytes`` GB, written slab by slab."""
    z = max(8, int(gigabytes * 1e9 / (SIDE * SIDE * 2)) // 8 * 8)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32)
    base = 1500 + 800 * np.sin(xx / 97.0) * np.cos(yy / 131.0)
    group = create_store(path, "volume", force=True)
    arr = create_volume_array(group, "volumes/synthetic/A", (z, SIDE, SIDE, 1), "u2", CHUNKS)
    for z0 in range(0, z, 8):
        shift = np.stack([np.roll(base, 3 * (z0 + k), axis=1) for k in range(8)])
        noise = rng.integers(0, 64, shift.shape, dtype=np.uint16)
        arr[z0 : z0 + 8] = (shift.astype(np.uint16) + noise)[..., None]
    manifest = {
        "created_by": "benchmarks/data_stats_volume.py",
        "split": {"method": "volume", "volumes": {"train": [{"name": "synthetic", "z": [0, z]}]}},
    }
    finalize_store(group, manifest, None)
    return (z, SIDE, SIDE, 1)


def files_of(path: Path) -> list[Path]:
    return sorted(f for f in path.rglob("*") if f.is_file())


def evict(path: Path) -> None:
    """Drop our own files from the page cache (no effect on anything else)."""
    for f in files_of(path):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def sequential_read(path: Path) -> tuple[int, float]:
    total, start = 0, time.perf_counter()
    for f in files_of(path):
        with open(f, "rb") as fh:
            while block := fh.read(8 << 20):
                total += len(block)
    return total, time.perf_counter() - start


_RUN = """
import sys, time
start = time.perf_counter()
src = sys.argv[3]
if src:  # another source tree: bypass the installed (editable) package
    sys.meta_path = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
    sys.path.insert(0, src)
    from stainbench.data.stats import recompute_store_stats
    kwargs = {}
else:
    from stainbench.data.stats import recompute_store_stats
    variant = sys.argv[2]
    kwargs = {}
    if variant == "local":
        kwargs = {"scheduler": "local"}
    elif variant.startswith("proc"):
        kwargs = {"processes": int(variant.removeprefix("proc"))}
    elif variant.startswith("threads"):
        kwargs = {"threads": int(variant.removeprefix("threads")), "processes": 1}
imported = time.perf_counter()
recompute_store_stats(sys.argv[1], **kwargs)  # default: what 'data stats' runs
print("PASS", imported - start, time.perf_counter() - imported)
"""


def stats_pass(path: Path, variant: str, src: str = "") -> dict[str, float]:
    """One stats run in a fresh process: wall seconds of the whole process (``process_s``),
    of its imports (``import_s``) and of the ``recompute_store_stats`` call (``pass_s``:
    planning, reading, decompressing, counting, writing the attributes; the first call's
    loading of the compiled counting kernels included), its peak RSS and CPU seconds.

    Dask workers are separate processes: their CPU time and memory are not in these
    numbers (the ``local`` variant's RSS is the client's only); ``/usr/bin/time`` reports the
    largest of the process and its spawned workers, not their sum.
    """
    cmd = ["/usr/bin/time", "-f", "%M %U %S", sys.executable, "-c", _RUN, str(path), variant, src]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"stats failed: {proc.stderr[-2000:]}")
    rss_kb, user, system = proc.stderr.strip().splitlines()[-1].split()
    line = next(x for x in proc.stdout.splitlines() if x.startswith("PASS "))
    import_s, pass_s = (float(v) for v in line.split()[1:])
    return {
        "process_s": elapsed,
        "import_s": import_s,
        "pass_s": pass_s,
        "peak_rss_MB": int(rss_kb) * 1024 / 1e6,
        "cpu_s": float(user) + float(system),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4,8", help="volume sizes in GB, comma separated")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR / "data_stats.json",
        help="JSON result; default under the temp folder (docs/benchmarks/ holds the "
        "committed runs)",
    )
    parser.add_argument("--keep", action="store_true")
    parser.add_argument(
        "--variants",
        default="default,threads2,proc2,local",
        help="stats variants, comma separated",
    )
    parser.add_argument("--compare-src", default="", help="another stainbench source tree")
    parser.add_argument("--repeats", type=int, default=3, help="read + variants, N times")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v] + (["src"] if args.compare_src else [])
    uptime_before = machine_load()
    print(uptime_before, flush=True)
    results = []
    for size in (float(s) for s in args.sizes.split(",")):
        path = Path(tempfile.mkdtemp(prefix=f"sb_stats_{size:g}gb_", dir=args.dir)) / "v.zarr"
        try:
            t0 = time.perf_counter()
            shape = write_volume(path, size)
            write_s = time.perf_counter() - t0
            raw = int(np.prod(shape)) * 2
            reads: list[float] = []
            runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
            paired: dict[str, list[float]] = {v: [] for v in variants}
            nbytes = 0
            for repeat in range(args.repeats):
                evict(path)
                nbytes, read_s = sequential_read(path)
                reads.append(read_s)
                print(f"size {size:g} repeat {repeat}: read {read_s:.3f} s", flush=True)
                for variant in variants:
                    evict(path)
                    src = args.compare_src if variant == "src" else ""
                    run = {**stats_pass(path, variant, src), "load_after": os.getloadavg()[0]}
                    runs[variant].append(run)
                    paired[variant].append(read_s / run["pass_s"])
                    print(f"  {variant} {json.dumps(run)}", flush=True)
            evict(path)
            read_again = sequential_read(path)[1]  # did the disk change meanwhile?
            read_med = statistics.median(reads)
            row: dict = {
                "size_gb": raw / 1e9,
                "shape": list(shape),
                "file_bytes": nbytes,
                "compression": raw / nbytes,
                "write_s": write_s,
                "read_s": read_med,
                "read_all_s": reads,
                "read_again_s": read_again,
                "read_MBps_files": nbytes / 1e6 / read_med,
                "stats": {},
            }
            for variant, vruns in runs.items():
                med = {k: statistics.median(r[k] for r in vruns) for k in vruns[0]}
                row["stats"][variant] = {
                    **med,
                    "peak_rss_MB": max(r["peak_rss_MB"] for r in vruns),
                    "pass_all_s": [r["pass_s"] for r in vruns],
                    "MBps_files_pass": nbytes / 1e6 / med["pass_s"],
                    "MBps_files_process": nbytes / 1e6 / med["process_s"],
                    "ratio_pass": read_med / med["pass_s"],
                    "ratio_process": read_med / med["process_s"],
                    "ratio_pass_paired": statistics.median(paired[variant]),
                }
                print(variant, json.dumps(row["stats"][variant]), flush=True)
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "stats"}), flush=True)
        finally:
            if not args.keep:
                shutil.rmtree(path.parent, ignore_errors=True)
    report = {
        "benchmark": "statistics pass over uint16 volumes vs sequential read of the same files",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
        "uptime_before": uptime_before,
        "uptime_after": machine_load(),
        "compare_src": args.compare_src or None,
        "repeats": args.repeats,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

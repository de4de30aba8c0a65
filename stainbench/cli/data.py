"""``stainbench data``: demo data set, ingestion, statistics and store summaries.

Thin wrappers: each command parses its options, calls one function of ``stainbench.data``
and renders the result with rich. zarr, numpy-heavy modules and torch load inside commands.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from stainbench.log import err_console, out_console

if TYPE_CHECKING:
    from stainbench.data.info import StoreInfo

data_app = typer.Typer(
    help="Data: the demo data set, ingestion into zarr stores, statistics, summaries.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group to the main app."""
    app.add_typer(data_app, name="data")


@contextmanager
def _progress() -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar on stderr; yields ``update(task, done, total)``."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    tasks: dict[str, int] = {}
    with Progress(
        TextColumn("{task.description:<16}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    ) as bar:

        def update(task: str, done: int, total: int) -> None:
            if task not in tasks:
                tasks[task] = bar.add_task(task, total=total)
            bar.update(tasks[task], completed=done, total=total)

        yield update


@data_app.command("demo")
def demo(
    out: Annotated[
        Path,
        typer.Argument(help="Directory to write paired.zarr, unpaired.zarr and volume.zarr into."),
    ],
    tile: Annotated[
        int,
        typer.Option(
            help="Tile side in pixels (16-256). The 512x512 source image is cut into "
            "full-height vertical stripes that alternate train, val, train from the left (3 "
            "stripes at 128) with an 8-pixel guard between them, so both splits hold glands and "
            "stroma and no training tile contains a validation pixel.",
        ),
    ] = 128,
    train: Annotated[int, typer.Option(help="Training tiles (random positions, seeded).")] = 7500,
    val: Annotated[int, typer.Option(help="Validation tiles.")] = 750,
    seed: Annotated[int, typer.Option(help="Seed of the tile positions.")] = 0,
    force: Annotated[bool, typer.Option(help="Replace existing stores in OUT.")] = False,
) -> None:
    """Write the built-in demo data set from scikit-image's immunohistochemistry image.

    Input A is the hematoxylin-only rendering of the field (colour deconvolution with
    rgb2hed / hed2rgb, DAB removed), target B the original IHC image: the model learns where
    the brown DAB marker goes. Also writes an unpaired variant and a small paired 3D volume.
    """
    import time

    from stainbench.data.demo import make_demo_store

    start = time.perf_counter()
    with _progress() as update:
        result = make_demo_store(
            out, tile=tile, n_train=train, n_val=val, seed=seed, force=force, progress=update
        )
    elapsed = time.perf_counter() - start
    from rich.table import Table

    table = Table(title=f"demo data set in {result.out} ({elapsed:.1f} s)")
    table.add_column("store")
    table.add_column("what")
    table.add_row(str(result.paired), f"paired A→B, {train} train + {val} val tiles {tile}x{tile}")
    table.add_row(str(result.unpaired), "unpaired A / B, independent tiles, unequal counts")
    table.add_row(str(result.volume), "paired 3D volume, split by z range")
    out_console.print(table)


@data_app.command("info")
def info(
    store: Annotated[
        Path,
        typer.Argument(help="A store, or a directory of stores (e.g. the demo output)."),
    ],
) -> None:
    """Summarize a store: arrays, shapes, chunks, sizes on disk, stats, split, failures.

    Also checks a complete store for damage: every array its manifest lists must exist with
    the listed length, and every chunk file of every array must exist (a deleted chunk would
    read back as zeros). Exits with status 1 and a one-line error when a store is damaged.
    """
    from stainbench.data.info import describe_store, find_stores
    from stainbench.errors import DataError

    damaged = []
    for path in find_stores(store):
        found = describe_store(path)
        _render_info(found)
        if found.damaged:
            damaged.append(found)
    if damaged:
        first = damaged[0]
        more = f" ({len(first.problems) - 1} more problem(s) listed above)"
        raise DataError(
            f"{first.path}: damaged store: {first.problems[0]}"
            + (more if len(first.problems) > 1 else "")
            + "; re-ingest it with 'stainbench data ingest ... --force'"
        )


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _render_info(info: StoreInfo) -> None:
    from rich.panel import Panel
    from rich.table import Table

    state = "[green]complete[/]" if info.complete else "[red]INCOMPLETE (refused downstream)[/]"
    if info.damaged:
        state = "[red]DAMAGED (see problems below)[/]"
    ratio = info.nbytes / info.stored_bytes if info.stored_bytes else 0.0
    head = (
        f"kind [bold]{info.kind}[/], schema {info.schema_version}, {state}\n"
        f"manifest sha256 {info.manifest_hash or '-'}\n"
        f"{_fmt_bytes(info.nbytes)} of data, {_fmt_bytes(info.stored_bytes)} on disk "
        f"(compression {ratio:.2f}x)"
    )
    split = info.manifest.get("split", {})
    if split:
        head += f"\nsplit: method {split.get('method', '-')}, seed {split.get('seed', '-')}"
    out_console.print(Panel(head, title=str(info.path), expand=False))

    arrays = Table(title="arrays")
    for col in ("array", "shape", "dtype", "chunks", "shards", "data", "on disk", "files"):
        arrays.add_column(
            col,
            justify="right" if col in ("data", "on disk", "files") else "left",
            no_wrap=True,
        )
    for a in info.arrays:
        files = f"{a.chunks_present}/{a.chunks_expected}"
        if a.chunks_missing:
            files = f"[red]{files}[/]"
        elif a.chunks_unverified:
            files = f"[yellow]{files}[/]"
        arrays.add_row(
            a.key,
            "x".join(map(str, a.shape)),
            a.dtype,
            "x".join(map(str, a.chunks)),
            "x".join(map(str, a.shards)) if a.shards else "-",
            _fmt_bytes(a.nbytes),
            _fmt_bytes(a.stored_bytes),
            files,
        )
    out_console.print(arrays)
    unverified = sum(a.chunks_unverified for a in info.arrays)
    if unverified:
        out_console.print(
            f"[yellow]{unverified} chunk file(s) absent[/] that may be all-zero chunks zarr did "
            "not store; this store does not record which (re-ingest it to make it checkable)"
        )
    if info.problems:
        out_console.print(f"[red]{len(info.problems)} problem(s)[/]:")
        for line in info.problems:
            out_console.print(f"  {line}", highlight=False)

    splits = info.stats.get("splits", {})
    if splits:
        table = Table(title=f"statistics (schema {info.stats.get('schema_version')})")
        for col in ("split", "domain", "ch", "mean", "std", "min", "max", "p1", "p99"):
            table.add_column(col, justify="left" if col in ("split", "domain") else "right")
        for split_name, domains in splits.items():
            for domain, ds in domains.items():
                for c in range(int(ds["channels"])):
                    table.add_row(
                        split_name,
                        domain,
                        str(c),
                        *(f"{ds[f][c]:.2f}" for f in ("mean", "std", "min", "max", "p1", "p99")),
                    )
        out_console.print(table)
    else:
        out_console.print("[yellow]no statistics[/] (run 'stainbench data stats')")

    if info.failures:
        table = Table(title=f"[red]{len(info.failures)} input(s) failed[/]")
        table.add_column("file")
        table.add_column("reason")
        for f in info.failures:
            table.add_row(str(f.get("path")), str(f.get("reason")))
        out_console.print(table)
    else:
        out_console.print("failures: none")


def _triple(value: str | None, option: str) -> tuple[int, int, int] | None:
    if value is None:
        return None
    try:
        parts = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise typer.BadParameter(
            f"expected Z,Y,X integers, got {value!r}", param_hint=option
        ) from None
    if len(parts) != 3:
        raise typer.BadParameter(f"expected 3 values Z,Y,X, got {value!r}", param_hint=option)
    return parts  # type: ignore[return-value]


@data_app.command("ingest")
def ingest(
    source: Annotated[
        Path,
        typer.Argument(
            help="Input folder: A/ and B/ (paired, unpaired, volume), AB images (aligned), "
            "or one volume file/zarr (volume)."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Store to write (STORE.zarr).")],
    layout: Annotated[
        str,
        typer.Option(
            help="paired: A/ and B/ matched by file name; aligned: side-by-side AB images split "
            "at half width; unpaired: A/ and B/ of any sizes; volume: multi-page TIFF, zarr or "
            "OME-Zarr volumes in A/ (and B/), or one volume."
        ),
    ] = "paired",
    val_fraction: Annotated[
        float, typer.Option(help="Fraction of inputs (or of rows / z slices) for validation.")
    ] = 0.1,
    split_by: Annotated[
        str,
        typer.Option(
            help="file: whole files/volumes go to one split (seeded); region: the bottom rows "
            "of each image (last z slices of each volume) are validation; auto: file when "
            "every domain has >= 2 inputs, else region."
        ),
    ] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the train/val split.")] = 0,
    tile: Annotated[
        int | None,
        typer.Option(help="Cut images into non-overlapping N x N tiles (edges dropped)."),
    ] = None,
    chunks: Annotated[
        str | None,
        typer.Option(help="Volume chunk shape Z,Y,X (default 8,256,256, clipped to the volume)."),
    ] = None,
    shards: Annotated[
        str | None,
        typer.Option(
            help="Volume shard shape Z,Y,X (multiples of --chunks): many chunks in one file."
        ),
    ] = None,
    on_error: Annotated[
        str,
        typer.Option(
            help="fail: stop at the first bad input; skip: skip it and list it in the manifest."
        ),
    ] = "fail",
    force: Annotated[bool, typer.Option(help="Replace an existing store at --out.")] = False,
) -> None:
    """Ingest image folders or volumes into a chunked, compressed zarr store with a manifest
    and normalization statistics."""
    from stainbench.data.ingest import IngestOptions
    from stainbench.data.ingest import ingest as run_ingest

    options = IngestOptions(
        layout=layout,
        val_fraction=val_fraction,
        seed=seed,
        on_error=on_error,
        split_by=split_by,
        tile=tile,
        chunks=_triple(chunks, "--chunks"),
        shards=_triple(shards, "--shards"),
        force=force,
    )
    with _progress() as update:
        result = run_ingest(source, out, options, progress=update)
    from rich.table import Table

    table = Table(title=f"{result.path} ({result.kind}, {result.seconds:.1f} s)")
    table.add_column("split")
    for d in sorted({d for c in result.counts.values() for d in c}):
        table.add_column(d, justify="right")
    for split, counts in result.counts.items():
        table.add_row(split, *(str(v) for v in counts.values()))
    out_console.print(table)
    out_console.print(
        f"split by {result.split_method}; {result.sources} source file(s); "
        f"{len(result.conversions)} conversion(s); manifest sha256 {result.manifest_hash}"
    )
    if result.failures:
        out_console.print(f"[yellow]{len(result.failures)} input(s) skipped[/]:")
        for f in result.failures:
            out_console.print(f"  {f['path']}: {f['reason']}", highlight=False)


@data_app.command("stats")
def stats(
    store: Annotated[Path, typer.Argument(help="The store whose statistics to (re)compute.")],
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="Compute with Dask: 'local' starts a local cluster (2 worker processes); "
            "an address such as tcp://host:8786 uses a running scheduler. Default: this "
            "process. The numbers are identical either way (exact histograms add up)."
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Threads of the in-process pass (each reads, decompresses and counts its "
            "own blocks). Default: 2 per CPU core, at most 8.",
        ),
    ] = None,
) -> None:
    """Recompute normalization statistics (per channel mean, std, min, max, percentiles
    0.5/1/99/99.5; per split and per tile or volume) in one streaming pass."""
    import time

    from stainbench.data.stats import IN_PROCESS_THREADS, recompute_store_stats

    start = time.perf_counter()
    with _progress() as update:
        result = recompute_store_stats(
            store,
            scheduler=scheduler,
            progress=lambda d, t: update("statistics", d, t),
            threads=threads or IN_PROCESS_THREADS,
        )
    seconds = time.perf_counter() - start
    rate = result.nbytes / 1e6 / seconds if seconds > 0 else 0.0
    out_console.print(
        f"{store}: {result.n_blocks} block(s), {_fmt_bytes(result.nbytes)} in {seconds:.1f} s "
        f"({rate:.0f} MB/s) with {scheduler or 'this process'}"
    )
    from stainbench.data.info import describe_store

    _render_info(describe_store(store))

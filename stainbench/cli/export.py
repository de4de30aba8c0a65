"""``stainbench export``: checkpoints (and classical baselines) into a Triton model repository."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from stainbench.log import err_console, out_console

if TYPE_CHECKING:
    from stainbench.export.check import CheckReport
    from stainbench.export.exporter import ExportResult

HELP = (
    "Export checkpoints into a Triton model repository, and/or check that repository.\n\n"
    "Each CHECKPOINT_OR_RUN_DIR (a .pt file, or a run folder: best.pt, else last.pt) becomes "
    "a served model <family>_<run> (run: the recipe's name; or --name): an ONNX graph taking "
    "and returning uint8 RGB tiles (B, H, W, 3) with the normalization inside, gated on "
    "parity with PyTorch, written as a new version directory with config.pbtxt and an export "
    "manifest. --baselines STORE also fits and exports the classical 'reinhard' and "
    "'macenko' models on the store's target-domain tiles. --check starts the real Triton "
    "server on the repository and checks that every model is READY and answers a real tile "
    "as it does in-process."
)


def _render_exports(results: list[ExportResult]) -> None:
    from rich.table import Table

    table = Table(title="exported", header_style="bold")
    # the model name is what --models takes later: folded, never cut, on a narrow terminal
    table.add_column("model", overflow="fold")
    for col in ("version", "flavour", "family", "multiple", "float err", "uint8", "batch"):
        table.add_column(col)
    for r in results:
        p = r.parity
        gated = "float_rel" in p
        table.add_row(
            r.name,
            str(r.version),
            r.flavour,
            r.family,
            str(r.size_multiple),
            f"{p['float_rel']:.1e}" if gated else "-",
            f"≤{p['uint8_max']}" if gated else "-",
            f"≤{p['batch_uint8_max']}" if gated else "-",
        )
    out_console.print(table)
    repos = sorted({str(r.model_dir.parent) for r in results})
    names = ", ".join(f"{r.name} (version {r.version})" for r in results)
    out_console.print(
        f"written into {', '.join(repos)}: {names} · parity: ONNX Runtime vs PyTorch (float "
        "relative error, uint8 grey levels) and a tile alone vs in a batch; '-' = served by "
        "the same numpy code",
        highlight=False,
        soft_wrap=True,
    )


def _render_check(report: CheckReport) -> None:
    from rich.table import Table

    table = Table(title=f"check of {report.repo}", header_style="bold")
    table.add_column("model", overflow="fold")
    for col in ("flavour", "version", "status", "tile", "detail"):
        table.add_column(col)
    colour = {"ok": "green", "failed": "red", "static-only": "yellow"}
    for m in report.models:
        detail = m.reason or ("identical to in-process" if m.max_diff == 0 else "")
        table.add_row(
            m.name,
            m.flavour,
            "" if m.version is None else str(m.version),
            f"[{colour.get(m.status, 'white')}]{m.status}[/]",
            "x".join(map(str, m.tile_shape[1:3])) if m.tile_shape else "",
            detail,
        )
    out_console.print(table)


def _refuse_shared_names(paths: list[Path]) -> None:
    """Two runs under one served name would become versions of one model, and only the
    newest is served: refused. Two checkpoints of one run (best.pt, last.pt) are two
    versions of it, as intended."""
    from stainbench.errors import ExportError
    from stainbench.export.exporter import planned_model_name

    served: dict[str, Path] = {}
    for path in paths:
        model_name, ckpt = planned_model_name(path)
        ckpt = ckpt.resolve()
        if model_name in served and served[model_name].parent != ckpt.parent:
            raise ExportError(
                f"{served[model_name]} and {ckpt} would both be served as model "
                f"{model_name!r} (<family>_<recipe name>): export them one at a time with "
                "--name, or give their recipes different names"
            )
        served[model_name] = ckpt


def export(
    checkpoints: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="CHECKPOINT_OR_RUN_DIR...",
            help="Checkpoint files (.pt) or run folders (best.pt, else last.pt).",
            show_default=False,
        ),
    ] = None,
    repo: Annotated[
        Path, typer.Option("--repo", "-r", help="Triton model repository to write into.")
    ] = Path("model_repository"),
    profile: Annotated[
        Path | None,
        typer.Option(
            "--profile",
            "-p",
            help="Export profile YAML (export/cpu.yaml, export/cpu-throughput.yaml: two "
            "instances for concurrent load, export/onnxruntime.yaml, export/tensorrt-fp16.yaml, "
            "...). Default: python backend + ONNX Runtime on CPU, one instance.",
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(help="Served model name (one checkpoint only); default <family>_<run>."),
    ] = None,
    version: Annotated[
        int | None,
        typer.Option(min=1, help="Version number to write; default: one more than the newest."),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace an existing version, or a model of another family."),
    ] = False,
    baselines: Annotated[
        Path | None,
        typer.Option(
            "--baselines",
            metavar="STORE",
            help="Also export the 'reinhard' and 'macenko' baselines, fitted on the target "
            "domain (B) of this store's train split.",
        ),
    ] = None,
    reference_tiles: Annotated[
        int, typer.Option(min=1, help="Reference tiles used to fit the baselines.")
    ] = 16,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Serve the repository with the real Triton server and check every model "
            "(after exporting, if checkpoints are given).",
        ),
    ] = False,
    timeout: Annotated[
        float, typer.Option(min=1, help="Seconds to wait for the server in --check.")
    ] = 120.0,
) -> None:
    from stainbench.errors import ExportError

    paths = list(checkpoints or [])
    if not paths and baselines is None and not check:
        raise typer.BadParameter("give checkpoints, --baselines STORE, or --check")
    if name is not None and len(paths) != 1:
        raise typer.BadParameter("--name needs exactly one checkpoint")
    if version is not None and len(paths) + (2 if baselines else 0) > 1:
        raise typer.BadParameter("--version needs exactly one checkpoint and no --baselines")

    from stainbench.export.exporter import export_checkpoint
    from stainbench.export.profile import load_profile

    prof = load_profile(profile)
    if len(paths) > 1:
        _refuse_shared_names(paths)
    results: list[ExportResult] = []
    for path in paths:
        with err_console.status(f"exporting {path} ({prof.flavour}) ..."):
            results.append(
                export_checkpoint(path, repo, prof, name=name, version=version, force=force)
            )
    if baselines is not None:
        from stainbench.baselines.export import export_baselines

        with err_console.status(f"fitting and exporting baselines on {baselines} ..."):
            results.extend(
                export_baselines(baselines, repo, prof, n_reference=reference_tiles, force=force)
            )
    if results:
        _render_exports(results)
    if check:
        from stainbench.export.check import check_repository

        with err_console.status(f"serving {repo} with tritonserver and checking ..."):
            report = check_repository(repo, timeout=timeout)
        _render_check(report)
        failed = report.failed()
        if failed:
            detail = "; ".join(f"{m.name}: {m.reason}" for m in failed)
            raise ExportError(f"{len(failed)} model(s) in {repo} failed the check: {detail}")


def register(app: typer.Typer) -> None:
    app.command("export", help=HELP)(export)

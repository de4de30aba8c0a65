"""``stainbench compare``: quality and latency of every served model on a validation set.

:func:`run_compare` is the library entry point. It

1. opens the validation set (:mod:`stainbench.bench.valset`) and, without ``url``, starts the
   embedded Triton server on ``repo`` (stopped again at the end);
2. checks every model: known, READY, and the val tiles fit its ``stainbench.size_multiple``;
3. **quality**: sends every val tile to every model through Triton (``batch_size`` tiles per
   request), computes the per-tile metrics of the outputs against the targets, adds the
   identity row (output = input) locally, and summarizes with seeded bootstrap intervals and
   the paired relative difference to ``baseline`` (:mod:`stainbench.bench.quality`);
4. **parity**: for models whose ``model.onnx`` is in the repository, runs it in-process with
   ONNX Runtime on a few tiles and compares with the served output: identical for the same
   batch composition, at most 1 grey level when the batch differs; a mismatch is flagged;
5. **latency**: perf_analyzer's method through :mod:`stainbench.bench.latency`, per model
   and concurrency;
6. writes the report (:func:`stainbench.bench.report.write_report`).

An error or Ctrl-C after a served model was measured still writes what was measured,
marked incomplete, then re-raises: a :class:`~stainbench.errors.StainbenchError` with one
line that names the output folder, or :class:`CompareInterrupted` (a ``KeyboardInterrupt``).
An error before that (server down, unknown model or baseline, bad val set) writes nothing
and leaves a previous report in the output folder untouched.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from stainbench.bench.quality import IDENTITY, QualityAccumulator
from stainbench.bench.report import CompareResult, ExampleTiles, write_report
from stainbench.bench.valset import ValSet, open_val_set
from stainbench.errors import BenchmarkError, ServingError, StainbenchError
from stainbench.metrics import Stain, metric_settings

log = logging.getLogger(__name__)

#: ``progress(phase, done, total)``: called as work advances (phase: "quality", "parity",
#: "latency"); the CLI draws progress bars from it.
Progress = Callable[[str, int, int], None]


@dataclass
class CompareOptions:
    """Settings of one comparison (all recorded in ``results.json``).

    ``url``: a running server (``grpc://HOST:PORT`` / ``http://HOST:PORT``); without it the
    embedded server is started on ``repo``. ``repo`` with ``url``: only used to find each
    model's ``model.onnx`` for the parity check. ``models``: default every READY model.
    ``batch_size``: tiles per quality request (capped by each model's ``max_batch_size``).
    ``parity_tiles``: tiles for the served-vs-local check (0 skips it). ``example_tiles``:
    tiles shown in the image grid. ``concurrency``: empty skips the latency measurement.
    ``latency``: extra keyword arguments for the latency engine (window length, warm-up...).
    """

    val_set: Path
    url: str | None = None
    repo: Path | None = None
    models: list[str] | None = None
    protocol: Literal["grpc", "http"] = "grpc"
    concurrency: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    baseline: str | None = None
    out: Path = Path("compare_out")
    max_tiles: int | None = None
    batch_size: int = 1
    stain: Stain = "dab"
    stain_threshold: float | None = None
    n_boot: int = 2000
    seed: int = 0
    confidence: float = 0.95
    parity_tiles: int = 4
    example_tiles: int = 4
    server_timeout: float = 180.0
    latency: dict[str, Any] = field(default_factory=dict)
    command: str = ""

    def validate(self) -> None:
        if self.protocol not in ("grpc", "http"):
            raise BenchmarkError(f"--protocol must be grpc or http, got {self.protocol!r}")
        if self.url is None and self.repo is None:
            raise BenchmarkError("pass --url of a running server or --repo to start one")
        if any(c < 1 for c in self.concurrency):
            raise BenchmarkError(f"--concurrency values must be >= 1, got {self.concurrency}")
        if self.batch_size < 1:
            raise BenchmarkError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.parity_tiles < 0 or self.example_tiles < 0:
            raise BenchmarkError("--parity-tiles and --example-tiles must be >= 0")
        if self.out.exists() and not self.out.is_dir():
            raise BenchmarkError(f"--out {self.out} is a file; pass a folder for the report")
        if self.n_boot < 100:
            raise BenchmarkError(f"--n-boot must be at least 100, got {self.n_boot}")
        if not 0.0 < self.confidence < 1.0:
            raise BenchmarkError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.models is not None and not self.models:
            raise BenchmarkError("--models is empty; name at least one model or leave it out")
        if self.models is not None and len(set(self.models)) != len(self.models):
            raise BenchmarkError(f"--models lists a model twice: {','.join(self.models)}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


@dataclass
class ModelPlan:
    """What :func:`run_compare` found out about one served model before measuring."""

    name: str
    version: str
    family: str
    size_multiple: int
    max_batch_size: int
    backend: str
    onnx_path: Path | None
    intra_op_threads: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["onnx_path"] = str(self.onnx_path) if self.onnx_path else None
        return d


def _param(config: dict[str, Any], key: str, default: str = "") -> str:
    value = config.get("parameters", {}).get(key, {})
    text = value.get("string_value", "") if isinstance(value, dict) else ""
    return text if text != "" else default


def plan_models(
    client: Any, requested: Sequence[str] | None, repo: Path | None
) -> tuple[list[ModelPlan], list[str]]:
    """Check the requested (default: all READY) models; returns plans and warnings."""
    infos = client.models()
    warnings: list[str] = []
    if requested is None:
        names = sorted({m.name for m in infos if m.state == "READY"})
        not_ready = sorted({m.name for m in infos if m.state != "READY"} - set(names))
        if not_ready:
            warnings.append(f"models not READY and left out: {', '.join(not_ready)}")
        if not names:
            raise BenchmarkError(
                f"no READY model at {client.url}; export one ('stainbench export') or check "
                "the server's log"
            )
    else:
        names = list(requested)
        for name in names:
            client.require_ready(name)
    version_of = {m.name: m.version for m in infos if m.state == "READY"}
    plans = []
    for name in names:
        cfg = client.config(name)
        try:
            multiple = int(_param(cfg, "stainbench.size_multiple", "1"))
        except ValueError:
            multiple = 1
        instances = sum(int(g.get("count", 1)) for g in cfg.get("instance_group", [])) or 1
        try:
            threads = int(_param(cfg, "stainbench.intra_op_threads", "0"))
        except ValueError:
            threads = 0
        if threads <= 0:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
            threads = max(1, cores // instances)
        version = version_of.get(name, "")
        onnx_path = None
        if repo is not None and version:
            candidate = repo / name / version / _param(cfg, "stainbench.onnx_file", "model.onnx")
            onnx_path = candidate if candidate.is_file() else None
        backend = cfg.get("backend") or cfg.get("platform") or ""
        plans.append(
            ModelPlan(
                name=name,
                version=version,
                family=_param(cfg, "stainbench.family", "unknown"),
                size_multiple=max(1, multiple),
                max_batch_size=max(1, int(cfg.get("max_batch_size", 1) or 1)),
                backend=str(backend),
                onnx_path=onnx_path,
                intra_op_threads=threads,
            )
        )
    return plans, warnings


@contextlib.contextmanager
def _server(options: CompareOptions) -> Iterator[tuple[str, Any]]:
    """Yield ``(url, server or None)``: the given URL, or the embedded server's."""
    if options.url is not None:
        yield options.url, None
        return
    from stainbench.serving.server import TritonServer

    assert options.repo is not None
    with TritonServer(
        options.repo, models=options.models, timeout=options.server_timeout
    ) as server:
        url = server.grpc_url if options.protocol == "grpc" else server.http_url
        yield url, server


def local_session(plan: ModelPlan) -> Any:
    """An in-process ONNX Runtime session on ``plan.onnx_path`` set up as ``model.py`` does."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = plan.intra_op_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(plan.onnx_path), opts, providers=["CPUExecutionProvider"])


def run_local(session: Any, tiles: np.ndarray) -> np.ndarray:
    """Run an exported model in-process on uint8 ``(B, H, W, 3)``; returns uint8 output."""
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: np.ascontiguousarray(tiles)})[0])


def check_parity(
    client: Any, plan: ModelPlan, inputs: np.ndarray, *, repo_known: bool = True
) -> dict[str, Any]:
    """Served vs in-process output of ``plan`` on ``inputs`` (uint8 ``(k, H, W, 3)``).

    Same batch composition (all ``k`` tiles in one request, locally as one batch) must be
    identical; one tile per request against the local batch may differ by at most 1 grey
    level (batch-dependent kernels).
    """
    if plan.onnx_path is None:
        where = "in the repository" if repo_known else "(pass --repo to check it)"
        return {"ok": None, "detail": f"not checked: no model.onnx {where}"}
    session = local_session(plan)
    k = min(len(inputs), plan.max_batch_size)
    batch = inputs[:k]
    local = run_local(session, batch)
    served = client.infer(plan.name, batch)
    same = int(np.max(np.abs(served.astype(np.int16) - local.astype(np.int16)), initial=0))
    singles = np.concatenate([client.infer(plan.name, batch[i : i + 1]) for i in range(k)])
    cross = int(np.max(np.abs(singles.astype(np.int16) - local.astype(np.int16)), initial=0))
    ok = same == 0 and cross <= 1
    detail = (
        f"{k} tiles: same batch max |diff| {same} (must be 0), one tile per request vs local "
        f"batch max |diff| {cross} (must be <= 1)"
    )
    return {
        "ok": ok,
        "n_tiles": k,
        "same_batch_max_abs_diff": same,
        "cross_batch_max_abs_diff": cross,
        "max_abs_diff": max(same, cross),
        "same_batch_identical": same == 0,
        "detail": detail,
    }


def _latency_tiles(valset: ValSet, n: int = 8) -> np.ndarray:
    first = valset.batches(n)[0]
    return valset.get(first)[0]


def measure_latency(
    url: str,
    protocol: str,
    plan: ModelPlan,
    tiles: np.ndarray,
    concurrency: Sequence[int],
    settings: dict[str, Any],
    *,
    server_pid: int | None = None,
    on_point: Callable[[], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[int, list[float]], list[str]]:
    """Latency rows (one per concurrency), raw latencies (ms) and warnings for one model.

    Uses :func:`stainbench.bench.latency.measure_latency` (perf_analyzer's method); each row
    holds the flat columns of :func:`~stainbench.bench.latency.points_table` plus
    ``throughput`` (tiles/s) and the full point (windows, server split) under ``detail``.
    """
    from stainbench.bench import latency as engine

    known = set(engine.LatencySettings.__dataclass_fields__) - {"concurrency"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise BenchmarkError(
            f"unknown latency settings {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    rows: list[dict[str, Any]] = []
    samples: dict[int, list[float]] = {}
    warnings: list[str] = []
    for c in concurrency:
        try:
            point_settings = engine.LatencySettings(concurrency=int(c), **settings)
        except (TypeError, ValueError) as exc:
            raise BenchmarkError(f"invalid latency settings: {exc}") from None
        point = engine.measure_latency(
            url,
            plan.name,
            tiles,
            point_settings,
            protocol=protocol,  # type: ignore[arg-type]
            server_pid=server_pid,
        )
        row = dict(engine.points_table([point])[0])
        row["throughput"] = row["tiles_per_s"]
        row["detail"] = point.to_dict()
        rows.append(row)
        samples[int(c)] = [float(x) for x in point.samples_ms]
        warnings += [f"{plan.name} c={c}: {w}" for w in point.warnings]
        if on_point:
            on_point()
    return rows, samples, warnings


class CompareInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`run_compare`. ``report``: the folder holding the partial report
    (marked incomplete), or ``None`` when nothing had been measured and nothing written."""

    def __init__(self, report: Path | None) -> None:
        super().__init__()
        self.report = report


def run_compare(options: CompareOptions, progress: Progress | None = None) -> CompareResult:
    """Run a whole comparison and write its report into ``options.out``.

    Returns the complete :class:`CompareResult`. On a user-fixable error or Ctrl-C after a
    served model was measured, the partial result is written (marked incomplete) before the
    exception propagates (Ctrl-C as :class:`CompareInterrupted`). An error before anything
    was measured (server down, unknown model or baseline, bad val set) writes nothing: a
    previous report in ``options.out`` stays as it was. Writing a report replaces every file
    of the previous one (:func:`~stainbench.bench.report.write_report`).
    """
    options.validate()
    result = CompareResult(settings=options.to_dict(), valset={"source": str(options.val_set)})
    acc: QualityAccumulator | None = None
    phase = "opening the validation set"
    try:
        valset = open_val_set(options.val_set).subset(options.max_tiles)
        result.valset = valset.describe()
        result.tile_names = list(valset.names)
        acc = QualityAccumulator(
            metric_settings(np.uint8, stain=options.stain, threshold=options.stain_threshold)
        )
        phase = "starting the server" if options.url is None else "connecting to the server"
        with _server(options) as (url, server):
            from stainbench.serving.client import TritonClient

            result.settings["url"] = url
            if server is not None:
                result.settings["embedded_server"] = {
                    "repo": str(server.repo),
                    "startup_seconds": server.startup_seconds,
                }
            repo = options.repo.resolve() if options.repo is not None else None
            with TritonClient(url, options.protocol, timeout=options.server_timeout) as client:
                if not client.is_live():
                    raise ServingError(
                        f"cannot reach the Triton server at {url}; is it running? start one "
                        "with 'stainbench serve' or check --url"
                    )
                phase = "checking the models"
                plans, warns = plan_models(client, options.models, repo)
                result.warnings += warns
                result.models = {p.name: p.to_dict() for p in plans}
                if options.baseline is not None and options.baseline not in {
                    IDENTITY,
                    *result.models,
                }:
                    raise BenchmarkError(
                        f"--baseline {options.baseline!r} is not among the compared models "
                        f"({', '.join([IDENTITY, *result.models])})"
                    )
                for p in plans:
                    valset.check_size_multiple(p.name, p.size_multiple)

                phase = "measuring quality"
                _quality(client, plans, valset, acc, result, options, progress)

                if options.parity_tiles > 0:
                    phase = "checking served-vs-local parity"
                    first = valset.batches(options.parity_tiles)[0]
                    inputs = valset.get(first)[0]
                    for i, p in enumerate(plans):
                        result.parity[p.name] = check_parity(
                            client, p, inputs, repo_known=repo is not None
                        )
                        if result.parity[p.name].get("ok") is False:
                            result.warnings.append(
                                f"served output of {p.name} differs from in-process ONNX "
                                f"Runtime: {result.parity[p.name]['detail']}"
                            )
                        if progress:
                            progress("parity", i + 1, len(plans))

                if options.concurrency:
                    phase = "measuring latency"
                    tiles = _latency_tiles(valset)
                    total = len(plans) * len(options.concurrency)
                    done = 0

                    def _tick() -> None:
                        nonlocal done
                        done += 1
                        if progress:
                            progress("latency", done, total)

                    for p in plans:
                        phase = f"measuring latency of {p.name}"
                        rows, samples, warns = measure_latency(
                            url,
                            options.protocol,
                            p,
                            tiles,
                            options.concurrency,
                            options.latency,
                            server_pid=server.pid if server is not None else None,
                            on_point=_tick,
                        )
                        result.latency += rows
                        result.latency_samples[p.name] = samples
                        result.warnings += warns
    except KeyboardInterrupt:
        result.mark_incomplete(f"interrupted (Ctrl-C) while {phase}")
        written = _measured(result, acc)
        if written:
            _finish(result, acc, options)
        raise CompareInterrupted(options.out if written else None) from None
    except StainbenchError as exc:
        if not _measured(result, acc):  # nothing to report: leave the previous report alone
            raise
        result.mark_incomplete(f"{phase}: {exc}")
        _finish(result, acc, options)
        raise type(exc)(f"{exc} (partial results in {options.out})") from None
    _finish(result, acc, options)
    return result


def _measured(result: CompareResult, acc: QualityAccumulator | None) -> bool:
    """Whether any served model has been measured (quality, parity or latency)."""
    served_quality = acc is not None and any(m != IDENTITY for m in acc.models)
    return bool(served_quality or result.parity or result.latency)


def _quality(
    client: Any,
    plans: list[ModelPlan],
    valset: ValSet,
    acc: QualityAccumulator,
    result: CompareResult,
    options: CompareOptions,
    progress: Progress | None,
) -> None:
    """Every model on every tile, tiles outermost (an interrupted run stays paired)."""
    batch = min([options.batch_size] + [p.max_batch_size for p in plans])
    n_examples = min(options.example_tiles, len(valset))
    example_ids = valset.batches(max(1, n_examples))[0][:n_examples] if n_examples else []
    ex_outputs: dict[str, dict[int, np.ndarray]] = {p.name: {} for p in plans}
    done = 0
    for ids in valset.batches(batch):
        inputs, targets = valset.get(ids)
        acc.add_identity(ids, inputs, targets)
        for p in plans:
            try:
                out = client.infer(p.name, inputs)
            except ServingError as exc:
                names = ", ".join(valset.names[i] for i in ids)
                raise BenchmarkError(f"model {p.name!r} rejected tile(s) {names}: {exc}") from None
            if out.shape != inputs.shape:
                raise BenchmarkError(
                    f"model {p.name!r} returned shape {out.shape} for input {inputs.shape}"
                )
            acc.add(p.name, ids, out, targets)
            for j, t in enumerate(ids):
                if t in example_ids:
                    ex_outputs[p.name][t] = out[j]
        done += len(ids)
        if progress:
            progress("quality", done, len(valset))
    if example_ids:
        ex_in, ex_t = valset.get(example_ids)
        result.examples = ExampleTiles(
            names=[valset.names[i] for i in example_ids],
            inputs=ex_in,
            targets=ex_t,
            outputs={
                m: np.stack([o[i] for i in example_ids])
                for m, o in ex_outputs.items()
                if all(i in o for i in example_ids)
            },
        )


def _finish(result: CompareResult, acc: QualityAccumulator | None, options: CompareOptions) -> None:
    """Summarize whatever quality values exist and write the report (never raises twice)."""
    if acc is not None and acc.models:
        baseline = options.baseline if options.baseline in acc.models else None
        if options.baseline is not None and baseline is None:
            result.warnings.append(f"baseline {options.baseline!r} has no quality values")
        result.quality = acc.summarize(
            baseline=baseline,
            n_boot=options.n_boot,
            seed=options.seed,
            confidence=options.confidence,
        )
        result.per_tile = acc.rows()
    try:
        write_report(result, options.out)
    except OSError as exc:
        raise BenchmarkError(f"cannot write the report into {options.out}: {exc}") from None

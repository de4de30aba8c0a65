"""The generic training loop: ``fit(recipe, ...)`` drives any family's :class:`Task`.

Per step: a batch of raw patches from the deterministic per-step sampler, normalized on the
device (:func:`~stainbench.data.transforms.normalize_batch`), ``task.set_input``,
``task.optimize``, a finiteness check of the losses, the LR schedule. Every
``train.log_every`` steps a row goes to ``metrics.jsonl`` and ``metrics.csv``; every
``train.val_every`` steps (and at the end) the A -> B generator is scored on the store's
validation split (SSIM, PSNR, MAE of uint8 outputs against the targets, from
:mod:`stainbench.metrics`) into ``metrics.jsonl`` and ``val.csv``, ``last.pt`` is written and
``best.pt`` when ``train.best_metric`` improved. Checkpoints hold everything needed to resume
bit-for-bit: weights, optimizers, schedulers, step, epoch, image pools and RNG states.

Distributed: launched by ``torchrun`` (``WORLD_SIZE`` > 1), each process trains on its own
share of every step's samples through DistributedDataParallel (gloo on CPU, NCCL on GPU);
only rank 0 validates, logs and writes files.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from stainbench.data.transforms import normalize_batch
from stainbench.errors import ConfigError, DataError, ModelError, TrainingError
from stainbench.training.checkpoint import load_checkpoint, save_checkpoint
from stainbench.training.data import StepBatches, TrainingData, open_training_data, train_loader
from stainbench.training.recipe import RESUMABLE_KEYS, Recipe, recipe_changes, resolved
from stainbench.training.task import Task, TaskContext, linear_decay

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What a run produced. ``val``: the last validation's means (``ssim``, ``psnr`` in dB,
    ``mae`` in grey levels); ``identity``: the same metrics of output = input."""

    run_dir: Path
    family: str
    step: int
    epoch: int
    last: Path
    best: Path | None
    best_step: int | None
    val: dict[str, float] = field(default_factory=dict)
    identity: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    images_per_s: float = 0.0
    resumed_from: int | None = None


def build_task(recipe: Recipe, ctx: TaskContext) -> Task:
    """The family's task for ``recipe``."""
    if recipe.family == "unet":
        from stainbench.training.supervised import SupervisedTask

        return SupervisedTask(recipe, ctx)
    if recipe.family == "pix2pix":
        from stainbench.training.pix2pix import Pix2PixTask

        return Pix2PixTask(recipe, ctx)
    from stainbench.training.cyclegan import CycleGANTask

    return CycleGANTask(recipe, ctx)


def _device(choice: str, local_rank: int) -> torch.device:
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' requested but no CUDA GPU is available")
    return torch.device("cuda", local_rank)


def _size_multiple(recipe: Recipe) -> int:
    from stainbench.models import create_model

    assert recipe.generator is not None
    kwargs = {**recipe.generator.kwargs, "base_width": 1}
    if recipe.generator.arch == "unet":
        kwargs["max_width_mult"] = 1
    try:
        probe = create_model(recipe.generator.arch, **kwargs)
    except ModelError as exc:
        raise ConfigError(f"generator: {exc}") from None
    return int(getattr(probe, "size_multiple", 1))


# -- validation -----------------------------------------------------------------------------


def _to_raw(x: torch.Tensor, norm: Any, value_max: float) -> np.ndarray:
    """Normalized ``(B, C, H, W)`` -> raw ``(B, H, W, C)`` rounded to the data's integers."""
    raw = norm.inverse(x.float().cpu()).clamp(0, value_max).round()
    dtype = np.uint8 if value_max <= 255 else np.uint16
    return raw.permute(0, 2, 3, 1).numpy().astype(dtype)


def score(pred: np.ndarray, target: np.ndarray, value_max: float) -> dict[str, np.ndarray]:
    """Per-tile SSIM, PSNR (dB) and MAE (raw units) of ``(N, H, W, C)`` integer arrays."""
    from stainbench.metrics import mae, psnr, ssim

    r = float(value_max)
    return {
        "ssim": np.atleast_1d(ssim(pred, target, data_range=r)),
        "psnr": np.atleast_1d(psnr(pred, target, data_range=r)),
        "mae": np.atleast_1d(mae(pred, target, data_range=r)),
    }


def _mean(scores: dict[str, list[np.ndarray]]) -> dict[str, float]:
    out = {}
    for k, parts in scores.items():
        v = np.concatenate(parts)
        out[k] = float(np.mean(np.minimum(v, 100.0) if k == "psnr" else v))
    return out


@torch.no_grad()
def evaluate(
    generator: torch.nn.Module | None,
    data: TrainingData,
    device: torch.device,
    batch: int = 16,
    channels_last: bool = False,
) -> dict[str, float]:
    """Mean SSIM/PSNR/MAE on the validation tiles; ``generator=None`` scores output = input.

    Inputs are normalized with A's training normalization; outputs are mapped back to raw
    units with B's, clipped and rounded, i.e. scored as a served model's uint8 output would
    be. PSNR is capped at 100 dB per tile.
    """
    val = data.val
    assert val is not None
    norm_a, norm_b = data.norm["A"], data.norm["B"]
    was_training = generator.training if generator is not None else False
    if generator is not None:
        generator.eval()
    scores: dict[str, list[np.ndarray]] = {"ssim": [], "psnr": [], "mae": []}
    try:
        for lo in range(0, len(val), batch):
            target = val.B[lo : lo + batch]
            if generator is None:
                pred = val.A[lo : lo + batch]
            else:
                if val.X is not None:
                    x = val.X[lo : lo + batch].to(device)
                else:
                    a = torch.from_numpy(np.ascontiguousarray(val.A[lo : lo + batch]))
                    x = norm_a.forward(a.permute(0, 3, 1, 2).float()).to(device)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                pred = _to_raw(generator(x), norm_b, data.value_max)
            for k, v in score(pred, target, data.value_max).items():
                scores[k].append(v)
    finally:
        if generator is not None and was_training:
            generator.train()
    return _mean(scores)


# -- logging --------------------------------------------------------------------------------


class MetricsLog:
    """``metrics.jsonl`` (every record) plus ``metrics.csv`` (train rows) and ``val.csv``."""

    def __init__(self, run_dir: Path, keep_until: int | None) -> None:
        self.run_dir = run_dir
        self.jsonl = run_dir / "metrics.jsonl"
        self.csv = {"train": run_dir / "metrics.csv", "val": run_dir / "val.csv"}
        self.records: list[dict[str, Any]] = []
        if keep_until is not None and self.jsonl.exists():
            # a resumed run drops what was logged after its checkpoint
            for n, line in enumerate(self.jsonl.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    raise TrainingError(
                        f"{self.jsonl}: line {n} is not JSON; repair or delete that line, "
                        "then resume again"
                    ) from None
                if isinstance(rec, dict) and rec.get("step", 0) <= keep_until:
                    self.records.append(rec)
        self._rewrite()
        self._tb = None
        try:  # TensorBoard only if it is installed
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            pass

    def _rewrite(self) -> None:
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in self.records))
        for kind, path in self.csv.items():
            rows = [r for r in self.records if r.get("kind") == kind]
            if not rows:
                path.unlink(missing_ok=True)
                continue
            keys = list(dict.fromkeys(k for r in rows for k in r))
            with path.open("w", newline="") as fh:
                w = csv.DictWriter(fh, keys)
                w.writeheader()
                w.writerows(rows)

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        with self.jsonl.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        kind = record.get("kind", "train")
        path = self.csv[kind]
        rows = [r for r in self.records if r.get("kind") == kind]
        keys = list(dict.fromkeys(k for r in rows for k in r))
        if path.exists() and list(record) == keys and len(rows) > 1:
            with path.open("a", newline="") as fh:
                csv.DictWriter(fh, keys).writerow(record)
        else:
            self._rewrite()
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, int | float) and k not in ("step", "epoch"):
                    self._tb.add_scalar(f"{kind}/{k}", v, record.get("step", 0))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


# -- the loop -------------------------------------------------------------------------------


@contextmanager
def _sigint_flag() -> Iterator[dict[str, bool]]:
    """Turn Ctrl-C into a flag the loop checks between steps (main thread only)."""
    flag = {"stop": False}
    try:
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum: int, frame: Any) -> None:
            if flag["stop"]:  # second Ctrl-C: give up at once
                signal.signal(signal.SIGINT, previous)
                raise KeyboardInterrupt
            flag["stop"] = True

        signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _check_run_dir(run_dir: Path) -> None:
    """Refuse a run directory that cannot be one (a file, or below a file) before any work."""
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainingError(
            f"--out {run_dir} is a file, not a directory; give a new or existing run directory"
        )
    for parent in run_dir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise TrainingError(
                    f"--out {run_dir}: {parent} is a file, not a directory; "
                    "give a path below a directory"
                )
            if not run_dir.exists() and not os.access(parent, os.W_OK | os.X_OK):
                raise TrainingError(
                    f"--out {run_dir}: cannot create it, {parent} is not writable; "
                    "choose another --out"
                )
            break


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _resume_recipe(payload: dict[str, Any], recipe: Recipe, path: Path) -> Recipe:
    """The recipe a resume runs with: ``recipe`` if it differs from the checkpoint's only in
    :data:`~stainbench.training.recipe.RESUMABLE_KEYS`, with the checkpoint's run name.

    Raises a one-line :class:`TrainingError` listing every other changed key (old -> new), and
    one for a ``train.steps`` below the checkpoint's step.
    """
    if payload["family"] != recipe.family:
        raise ModelError(
            f"{path}: is a {payload['family']} checkpoint, the recipe trains {recipe.family}"
        )
    saved = payload.get("recipe")
    if not isinstance(saved, dict):
        raise ModelError(f"{path}: the checkpoint holds no recipe (corrupt file?)")
    changes = recipe_changes(saved, recipe)
    refused = {k: v for k, v in changes.items() if k not in RESUMABLE_KEYS}
    if refused:
        shown = [f"{k} {_show(old)} -> {_show(new)}" for k, (old, new) in refused.items()]
        more = f" and {len(shown) - 6} more" if len(shown) > 6 else ""
        raise TrainingError(
            f"{path.parent}: --resume must keep the run's recipe, but "
            f"{', '.join(shown[:6])}{more} changed; drop these changes to continue the run, "
            "or start a new run with another --out (on resume only train.steps, "
            "train.decay_steps, the log/val/checkpoint cadence, train.threads, train.device, "
            "data.workers and the store's path may change)"
        )
    step = int(payload["step"])
    t = recipe.train
    if t.steps < step:
        raise TrainingError(
            f"{path}: is at step {step}, past train.steps={t.steps}; resume with "
            f"--set train.steps=N with N >= {step}"
        )
    old_t = saved.get("train") if isinstance(saved.get("train"), dict) else {}
    old_steps = old_t.get("steps", t.steps)
    old_decay = old_t.get("decay_steps", t.decay_steps)
    if (old_steps, old_decay) != (t.steps, t.decay_steps):
        before, after = linear_decay(old_steps, old_decay), linear_decay(t.steps, t.decay_steps)
        moved = [s for s in range(step) if before(s) != after(s)]
        if moved:
            log.warning(
                "train.steps/decay_steps changed after the learning rate began to decay (step "
                "%d); from step %d on it follows the new schedule, so this run differs from "
                "one trained with the new values from the start",
                moved[0],
                step,
            )
    if t.steps == step:
        log.warning(
            "%s: the run already reached train.steps=%d; nothing to train (raise it with "
            "--set train.steps=N to train longer)",
            path.parent,
            step,
        )
    saved_name = str(payload.get("run_name") or saved.get("name") or recipe.name)
    if recipe.name != saved_name:
        log.info("resuming run %r (the recipe names it %r)", saved_name, recipe.name)
    return replace(recipe, name=saved_name)


def _store_to_use(
    store: str | Path | None, recipe: Recipe, payload: dict[str, Any] | None
) -> Path | None:
    """``--data`` if given; on resume the store the checkpoint recorded (an absolute path;
    older checkpoints hold it as given) when it still exists; else the recipe's
    ``data.store``. The loop then checks that the store's manifest hash is the run's."""
    if store is not None:
        return Path(store)
    if payload is not None:
        recorded = (payload.get("data") or {}).get("store")
        if isinstance(recorded, str) and recorded:
            if Path(recorded).expanduser().is_dir():
                return Path(recorded)
            if recipe.data.store is None or not recipe.data.store.expanduser().exists():
                raise DataError(
                    f"the run was trained on store {recorded}, which is not there (seen from "
                    f"{Path.cwd()}); pass its path with --data"
                )
    return recipe.data.store


def _follow_schedule(task: Task) -> None:
    """After loading a checkpoint: set each optimizer's LR from its scheduler's (possibly new)
    schedule at the loaded step. The optimizer state holds the LR the old schedule chose for
    the next step; with raised ``train.steps`` the new schedule may choose another."""
    for sched in task.schedulers.values():
        lambdas = getattr(sched, "lr_lambdas", None)
        if lambdas is None:
            continue
        lrs = [
            base * fn(sched.last_epoch) for base, fn in zip(sched.base_lrs, lambdas, strict=True)
        ]
        for group, lr in zip(sched.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        sched._last_lr = lrs  # what get_last_lr() reports


def _check_resume(
    payload: dict[str, Any], recipe: Recipe, task: Task, path: Path, data: TrainingData
) -> None:
    for name, spec in task.specs.items():
        saved = payload["networks"].get(name)
        if saved != {"arch": spec.arch, "kwargs": spec.kwargs}:
            raise ModelError(
                f"{path}: network {name} was {saved}, the recipe builds "
                f"{{'arch': {spec.arch!r}, 'kwargs': {spec.kwargs}}}; resume needs the same"
            )
    saved_hash = (payload.get("data") or {}).get("manifest_hash")
    if saved_hash and saved_hash != data.manifest_hash:
        raise TrainingError(
            f"{path}: was trained on store {saved_hash[:12]}..., {data.store} is "
            f"{data.manifest_hash[:12]}...; resume on the same data or start a new run"
        )


def fit(
    recipe: Recipe,
    *,
    run_dir: str | Path,
    store: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> FitResult:
    """Train ``recipe`` into ``run_dir`` and return what it produced.

    ``store`` overrides ``recipe.data.store``. ``resume``: continue from ``run_dir/last.pt``
    (weights, optimizers, schedulers, step, epoch, image pools, RNG states); ``train.steps``
    may be raised to train longer. ``stop_after``: stop (as if interrupted) after this many
    steps of this call, writing ``last.pt``. Raises :class:`TrainingError` on a non-finite
    loss (the last good checkpoint is kept), :class:`~stainbench.errors.DataError` /
    :class:`ConfigError` / :class:`ModelError` for bad inputs.
    """
    import torch.distributed as dist

    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    _check_run_dir(run_dir)
    last_path = run_dir / "last.pt"
    payload: dict[str, Any] | None = None
    if resume:
        if not last_path.exists():
            raise TrainingError(f"{run_dir}: no last.pt to resume from; start without --resume")
        payload = load_checkpoint(last_path)
        recipe = _resume_recipe(payload, recipe, last_path)
    given = _store_to_use(store, recipe, payload)
    if given is None:
        raise ConfigError("data.store: no store given (set it in the recipe or pass --data)")
    # the absolute path goes into recipe.yaml and the checkpoints, so that a later resume or
    # export run from another directory finds the store
    store_path = given.expanduser().resolve()
    recipe = replace(recipe, data=replace(recipe.data, store=store_path))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _device(recipe.train.device, local_rank)
    distributed = world > 1
    own_group = False
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        own_group = True
    main = rank == 0
    try:
        return _fit(
            recipe,
            run_dir,
            payload,
            str(given),
            progress and main,
            stop_after,
            on_step,
            device,
            rank,
            world,
            t_start,
        )
    finally:
        if own_group:
            dist.destroy_process_group()


def _fit(
    recipe: Recipe,
    run_dir: Path,
    payload: dict[str, Any] | None,
    store_given: str,
    progress: bool,
    stop_after: int | None,
    on_step: Callable[[int, dict[str, float]], None] | None,
    device: torch.device,
    rank: int,
    world: int,
    t_start: float,
) -> FitResult:
    t = recipe.train
    main = rank == 0
    resume = payload is not None
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    if main and not resume and last_path.exists():
        raise TrainingError(
            f"{run_dir}: already holds a run (last.pt); pass --resume to continue it or "
            "choose another --out"
        )
    if t.threads:
        torch.set_num_threads(t.threads)
    size_multiple = _size_multiple(recipe)
    assert recipe.data.store is not None
    data = open_training_data(recipe, recipe.data.store, size_multiple)

    torch.manual_seed(t.seed)  # identical initial weights on every rank
    ctx = TaskContext(
        in_channels=data.in_channels,
        out_channels=data.out_channels,
        norm=data.norm,
        device=device,
        rank=rank,
        world_size=world,
        value_max=data.value_max,
    )
    task = build_task(recipe, ctx)
    torch.manual_seed(t.seed * 7919 + 1 + rank)  # dropout etc. differ per rank

    step, best_value, best_step, resumed_from = 0, None, None, None
    if payload is not None:
        _check_resume(payload, recipe, task, last_path, data)
        task.load_state_dict(payload["state"])
        _follow_schedule(task)
        loop_state = payload["state"].get("loop", {})
        step = int(payload["step"])
        best_value = loop_state.get("best_value")
        best_step = loop_state.get("best_step")
        rng = payload["state"].get("rng", {})
        per_rank = rng.get("ranks", [])
        if rank < len(per_rank):
            _set_rng_state(per_rank[rank], device)
        resumed_from = step
        payload = None  # the weights are in the task now; free the loaded copy
    if world > 1:
        task.wrap_distributed()

    resolved_recipe = resolved(recipe)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainingError(
            f"--out {run_dir}: cannot create the run directory ({exc.strerror}); "
            "choose another --out"
        ) from None
    metrics = MetricsLog(run_dir, keep_until=step if resume else None) if main else None
    if main:
        header = f"# resolved recipe of run {recipe.name or run_dir.name}"
        if store_given != str(recipe.data.store):
            header += f"; data.store was given as {store_given}"
        text = yaml.safe_dump(resolved_recipe, sort_keys=False)
        (run_dir / "recipe.yaml").write_text(f"{header}\n{text}")

    identity: dict[str, float] = {}
    if main and data.val is not None:
        identity = evaluate(None, data, device)
        if not resume:
            assert metrics is not None
            metrics.write({"kind": "val", "step": 0, "model": "identity", **identity})

    sampler = StepBatches(len(data.train), t.batch_size, t.seed, step, t.steps, rank, world)
    end = t.steps if stop_after is None else min(t.steps, step + stop_after)
    sampler.stop = end
    # PatchLoader on the CPU (batches built in place, normalized already), else DataLoader;
    # its own generator: creating the iterator must not consume the global RNG, or a
    # resumed run's dropout would differ from an uninterrupted one
    loader = train_loader(data.train, sampler, recipe.data.workers, device, t.seed)

    def payload_at(cur: int) -> dict[str, Any]:
        state = task.state_dict()
        rng = _rng_state(device)
        if world > 1:
            import torch.distributed as dist

            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, rng)
            rng = {"ranks": gathered}
        else:
            rng = {"ranks": [rng]}
        state["rng"] = rng
        state["loop"] = {"best_value": best_value, "best_step": best_step}
        return {
            "family": recipe.family,
            "run_name": recipe.name or run_dir.name,
            "step": cur,
            "epoch": sampler.epoch_of(max(cur - 1, 0)),
            "recipe": resolved_recipe,
            "networks": {n: {"arch": s.arch, "kwargs": s.kwargs} for n, s in task.specs.items()},
            "state": state,
            "normalization": {k: v.to_dict() for k, v in data.norm.items()},
            # store: absolute; store_given: as the user named it (relative to where it ran)
            "data": {
                "store": str(recipe.data.store),
                "store_given": store_given,
                "manifest_hash": data.manifest_hash,
            },
        }

    last_good: int | None = resumed_from
    val: dict[str, float] = {}
    images = 0
    train_seconds = 0.0
    window: list[float] = []
    global_batch = t.batch_size * world
    bar = _Progress(progress, recipe.name or run_dir.name, step, t.steps)
    cur = step
    try:
        with _sigint_flag() as flag, bar:
            tick = time.perf_counter()
            for batch in loader:
                task.set_input(normalize_batch(batch, device))
                losses = task.optimize()
                bad = [k for k, v in losses.items() if not math.isfinite(v)]
                if bad:
                    where = (
                        f"the last good checkpoint {last_path} (step {last_good}) is kept"
                        if last_good is not None
                        else "no checkpoint was written yet"
                    )
                    raise TrainingError(
                        f"loss {bad[0]} became {losses[bad[0]]} at step {cur + 1}; {where}; "
                        "lower optim.lr or check the data"
                    )
                task.step_schedulers()
                cur += 1
                now = time.perf_counter()
                dt = now - tick
                train_seconds += dt
                images += global_batch
                window.append(dt)
                ips = global_batch * len(window[-20:]) / max(sum(window[-20:]), 1e-9)
                bar.update(cur, losses, ips)
                if on_step is not None:
                    on_step(cur, losses)
                if main and (cur % t.log_every == 0 or cur == end):
                    assert metrics is not None
                    metrics.write(
                        {
                            "kind": "train",
                            "step": cur,
                            "epoch": sampler.epoch_of(cur - 1),
                            "lr": task.lr(),
                            "img_per_s": round(ips, 4),
                            "time_s": round(now - t_start, 3),
                            **{k: round(v, 6) for k, v in losses.items()},
                        }
                    )
                do_val = data.val is not None and (
                    cur == t.steps or (t.val_every and cur % t.val_every == 0)
                )
                do_ckpt = (
                    cur == end
                    or do_val
                    or (t.checkpoint_every and cur % t.checkpoint_every == 0)
                    or flag["stop"]
                )
                if do_val and main:
                    assert metrics is not None
                    val = evaluate(task.generator(), data, device, channels_last=t.channels_last)
                    metrics.write({"kind": "val", "step": cur, "model": "G_AB", **val})
                    value = val[t.best_metric]
                    better = best_value is None or (
                        value < best_value if t.best_metric == "mae" else value > best_value
                    )
                    if better:
                        best_value, best_step = value, cur
                    bar.note(val)
                if do_ckpt:
                    ckpt = payload_at(cur)  # collective in distributed runs
                    if main:
                        save_checkpoint(last_path, ckpt)
                        if do_val and best_step == cur:
                            save_checkpoint(best_path, ckpt)
                    last_good = cur
                if flag["stop"]:
                    raise TrainingError(
                        f"interrupted at step {cur}; {last_path} saved, continue with --resume"
                    )
                tick = time.perf_counter()
    finally:
        if metrics is not None:
            metrics.close()
        if hasattr(loader, "close"):
            loader.close()  # PatchLoader: stop its workers, free the shared memory
    if main and data.val is None and cur == t.steps and not best_path.exists():
        # no paired validation split (unpaired store): the final weights are the best we know
        save_checkpoint(best_path, payload_at(cur))
    elif not main and data.val is None and cur == t.steps:
        payload_at(cur)  # join the collective
    return FitResult(
        run_dir=run_dir,
        family=recipe.family,
        step=cur,
        epoch=sampler.epoch_of(max(cur - 1, 0)),
        last=last_path,
        best=best_path if best_path.exists() else None,
        best_step=best_step,
        val=val,
        identity=identity,
        seconds=time.perf_counter() - t_start,
        images_per_s=images / train_seconds if train_seconds else 0.0,
        resumed_from=resumed_from,
    )


class _Progress:
    """A rich progress bar (steps, losses, img/s) or nothing."""

    def __init__(self, enabled: bool, name: str, start: int, total: int) -> None:
        self.enabled = enabled
        self._bar = None
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            from stainbench.log import err_console

            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=err_console,
                transient=False,
            )
            self._task = self._bar.add_task(name, total=total, completed=start, info="")
        self._val = ""

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def update(self, step: int, losses: dict[str, float], ips: float) -> None:
        if self._bar is None:
            return
        text = " ".join(f"{k} {v:.3g}" for k, v in losses.items())
        self._bar.update(self._task, completed=step, info=f"{text} | {ips:.2f} img/s{self._val}")

    def note(self, val: dict[str, float]) -> None:
        self._val = f" | val ssim {val['ssim']:.3f} psnr {val['psnr']:.2f}"

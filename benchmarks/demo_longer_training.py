"""The demo recipes trained longer: does more training change the GAN-vs-UNet ranking?

``make demo`` trains each family for a few CPU minutes. The product's reference claim is that
the unsupervised GANs beat the supervised UNet by about 15% on the 750-tile validation set;
the CPU-sized demo runs do not show it (docs/RESULTS.md). This script keeps every setting of
``train/demo/<family>.yaml`` (models, losses, batch, learning rate, the share of steps spent
in the linear decay) and only multiplies the number of steps, to a count chosen per family
so that its training takes about ``--budget-s`` seconds on the machine it runs on (measured
by a short calibration run first). Validation is the loop's own: SSIM / PSNR / MAE of the
served-style uint8 output on all val tiles, next to the identity baseline (output = input).

    python benchmarks/demo_longer_training.py --out-dir OUT --budget-s 75 --device cuda
    python benchmarks/demo_longer_training.py --out-dir /tmp/x --budget-s 5 --device cpu \
        --n-train 64 --n-val 16 --calib-steps 4 --min-factor 0      # a smoke run

Written for the GPU machine (``benchmarks/gpu_session.sh``); it runs on CPU too.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import torch

from stainbench.data.demo import make_demo_store
from stainbench.training.loop import fit
from stainbench.training.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("unet", "pix2pix", "cyclegan")


def _recipe(family: str, device: str, workers: int, steps: int, val_every: int):
    base = load_recipe(ROOT / "train" / "demo" / f"{family}.yaml")
    ratio = base.train.decay_steps / base.train.steps
    return load_recipe(
        ROOT / "train" / "demo" / f"{family}.yaml",
        [
            f"train.device={device}",
            f"data.workers={workers}",
            f"train.steps={steps}",
            f"train.decay_steps={round(ratio * steps)}",
            f"train.val_every={val_every}",
            f"train.log_every={max(1, steps // 50)}",
        ],
    ), base.train.steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--budget-s", type=float, default=75.0, help="training seconds per family")
    p.add_argument("--max-factor", type=float, default=100.0, help="at most this x the steps")
    p.add_argument("--min-factor", type=float, default=1.0, help="at least this x the steps")
    p.add_argument("--calib-steps", type=int, default=60)
    p.add_argument("--device", default="cuda")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers")
    p.add_argument("--n-train", type=int, default=7500)
    p.add_argument("--n-val", type=int, default=750)
    args = p.parse_args()
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    store = out / "data"
    make_demo_store(store, n_train=args.n_train, n_val=args.n_val, force=True)
    data_s = time.perf_counter() - t
    print(f"demo data: {data_s:.0f} s", flush=True)
    paired = store / "paired.zarr"
    report: dict = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "command": "python benchmarks/demo_longer_training.py " + " ".join(sys.argv[1:]),
        "data_seconds": data_s,
        "runs": {},
    }
    for family in args.families:
        calib, demo_steps = _recipe(family, args.device, args.workers, args.calib_steps, 0)
        c = fit(calib, run_dir=out / "calib" / family, store=paired, progress=False)
        steps_per_s = c.images_per_s / calib.train.batch_size
        steps = int(
            min(
                args.max_factor * demo_steps,
                max(args.min_factor * demo_steps, args.budget_s * steps_per_s),
            )
        )
        recipe, _ = _recipe(family, args.device, args.workers, steps, max(1, steps // 4))
        print(f"{family}: {steps_per_s:.1f} steps/s -> {steps} steps ({steps / demo_steps:.1f}x "
              "the demo recipe)", flush=True)  # fmt: skip
        r = fit(recipe, run_dir=out / "runs" / family, store=paired, progress=False)
        vals = [
            json.loads(line)
            for line in (r.run_dir / "metrics.jsonl").read_text().splitlines()
            if '"val"' in line
        ]
        report["runs"][family] = {
            "demo_steps": demo_steps,
            "steps": steps,
            "factor": steps / demo_steps,
            "seconds": r.seconds,
            "images_per_s": r.images_per_s,
            "final": r.val,
            "identity": r.identity,
            "best_step": r.best_step,
            "val_curve": vals,
        }
        print(f"{family}: final {r.val} identity {r.identity} in {r.seconds:.0f} s", flush=True)
        (out / "longer_training.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

"""The load test's own Locust options (model mix, tile file, batch size, timeout, seed).

They are registered on Locust's command-line parser by :func:`add_locust_arguments` (from the
locustfile's ``init_command_line_parser`` listener), can also be given as environment variables
(``STAINBENCH_MODELS`` etc.), and are sent by a Locust master to its workers.
No Locust import here: the parser is passed in.
"""

from __future__ import annotations

import bisect
import itertools
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stainbench.errors import ConfigError

MODEL_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class ModelMix:
    """Which models the users call, and how often: ``names[i]`` with weight ``weights[i]``."""

    names: tuple[str, ...]
    weights: tuple[float, ...]

    @classmethod
    def parse(cls, text: str) -> ModelMix:
        """Parse ``"unet_demo:3,pix2pix_demo"`` (weight defaults to 1; weights > 0).

        Raises :class:`ConfigError` for an empty list, a bad model name, a bad weight or a
        name given twice.
        """
        names: list[str] = []
        weights: list[float] = []
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            name, _, weight_text = item.partition(":")
            name = name.strip()
            if not MODEL_NAME.match(name):
                raise ConfigError(f"bad model name {name!r} in --models {text!r}")
            try:
                weight = float(weight_text) if weight_text.strip() else 1.0
            except ValueError:
                raise ConfigError(f"bad weight {weight_text!r} for model {name!r}") from None
            if not weight > 0 or weight == float("inf"):
                raise ConfigError(f"weight of model {name!r} must be > 0, got {weight_text!r}")
            if name in names:
                raise ConfigError(f"model {name!r} is given twice in --models {text!r}")
            names.append(name)
            weights.append(weight)
        if not names:
            raise ConfigError("no model to load-test: give --models NAME[:WEIGHT],...")
        return cls(tuple(names), tuple(weights))

    def pick(self, rng: random.Random) -> str:
        """One model name, drawn with probability ``weight / sum(weights)``."""
        if len(self.names) == 1:
            return self.names[0]
        cumulative = list(itertools.accumulate(self.weights))
        return self.names[bisect.bisect_right(cumulative, rng.random() * cumulative[-1])]

    def __str__(self) -> str:
        return ",".join(f"{n}:{w:g}" for n, w in zip(self.names, self.weights, strict=True))


@dataclass(frozen=True)
class UserSettings:
    """What each load-test user needs, read from Locust's parsed options.

    ``tiles``: ``.npy`` file, uint8 (N, H, W, 3); ``batch_size``: tiles per request;
    ``timeout_s``: per-request limit in seconds; ``seed``: seeds each user's model/tile RNG.
    """

    mix: ModelMix
    tiles: Path
    batch_size: int
    timeout_s: float
    seed: int

    @classmethod
    def from_options(cls, options: Any) -> UserSettings:
        if options is None:
            raise ConfigError("Locust options are missing: run the users through a locustfile")
        tiles = str(getattr(options, "tiles", "") or "")
        if not tiles:
            raise ConfigError("no tile file: give --tiles TILES.npy (uint8 N x H x W x 3)")
        batch_size = int(options.batch_size)
        timeout_s = float(options.request_timeout)
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
        if not timeout_s > 0:
            raise ConfigError(f"--request-timeout must be > 0 seconds, got {timeout_s}")
        return cls(
            mix=ModelMix.parse(str(options.models or "")),
            tiles=Path(tiles),
            batch_size=batch_size,
            timeout_s=timeout_s,
            seed=int(options.mix_seed),
        )


def add_locust_arguments(parser: Any) -> None:
    """Register the options on Locust's (configargparse) parser."""
    group = parser.add_argument_group("stainbench", "Load test of Triton-served stain models")
    group.add_argument(
        "--models",
        type=str,
        default="",
        env_var="STAINBENCH_MODELS",
        help="Models to call, with optional weights: 'unet_demo:3,pix2pix_demo'.",
    )
    group.add_argument(
        "--tiles",
        type=str,
        default="",
        env_var="STAINBENCH_TILES",
        help="Tile file (.npy, uint8 N x H x W x 3) on every machine that runs users.",
    )
    group.add_argument(
        "--batch-size",
        type=int,
        default=1,
        env_var="STAINBENCH_BATCH_SIZE",
        help="Tiles per request (default 1).",
    )
    group.add_argument(
        "--request-timeout",
        type=float,
        default=30.0,
        env_var="STAINBENCH_REQUEST_TIMEOUT",
        help="Per-request limit in seconds (default 30).",
    )
    group.add_argument(
        "--latency-dir",
        type=str,
        default="",
        env_var="STAINBENCH_LATENCY_DIR",
        help="Folder for raw per-request latencies, one latencies_<pid>.csv per process "
        "(default: none).",
    )
    group.add_argument(
        "--mix-seed",
        type=int,
        default=0,
        env_var="STAINBENCH_MIX_SEED",
        help="Seed of each user's model and tile choice (default 0).",
    )


def grpc_target(host: str) -> str:
    """``host:port`` for gRPC from Locust's ``--host`` (``grpc://h:p``, ``h:p``)."""
    target = host.strip()
    for scheme in ("grpc://", "http://", "https://"):
        if target.startswith(scheme):
            target = target[len(scheme) :]
    target = target.rstrip("/")
    if not target or ":" not in target:
        raise ConfigError(f"gRPC host must be HOST:PORT (e.g. 127.0.0.1:8001), got {host!r}")
    return target

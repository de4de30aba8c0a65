"""Locust entry point for load tests of Triton-served stain models.

Wiring only; the users live in :mod:`stainbench.loadtest.users`. Name the user class to run:

    python -m locust -f loadtests/locustfile.py --headless -u 4 -r 4 -t 30s \\
        --host http://127.0.0.1:8000 --models unet_demo --tiles tiles.npy TritonHttpUser

(``TritonGrpcUser`` with ``--host 127.0.0.1:8001`` for gRPC.) See loadtests/README.md.
"""

from __future__ import annotations

from typing import Any

from locust import events

from stainbench.loadtest.options import add_locust_arguments
from stainbench.loadtest.users import (
    TritonGrpcUser,
    TritonHttpUser,
    close_grpc_clients,
    exit_promptly,
    install_latency_recorder,
    let_csv_writer_finish,
)

__all__ = ["TritonGrpcUser", "TritonHttpUser"]


@events.init_command_line_parser.add_listener
def _stainbench_arguments(parser: Any) -> None:
    add_locust_arguments(parser)


# Raw per-request latencies (exact percentiles) when --latency-dir is given.
events.init.add_listener(install_latency_recorder)
# gRPC channels are closed before Locust stops, and the process leaves at most a few seconds
# after Locust's final report even if grpcio's threads would keep it alive.
events.quitting.add_listener(close_grpc_clients)
# Locust's stats CSV is rewritten once a second: let it catch the last second.
events.quitting.add_listener(let_csv_writer_finish)
events.quit.add_listener(exit_promptly)

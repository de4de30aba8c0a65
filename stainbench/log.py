"""Logging, configured in exactly one place (:func:`setup_logging`, called by the CLI).

Library modules only do ``log = logging.getLogger(__name__)``; they never configure handlers.
"""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler

#: Console for diagnostics (stderr), shared by logging, progress bars and error messages.
err_console = Console(stderr=True)
#: Console for results (stdout): tables and summaries a user may pipe.
out_console = Console()


def setup_logging(verbose: int = 0) -> None:
    """Route the ``stainbench`` loggers to a rich handler on stderr.

    ``verbose``: 0 warnings only, 1 info, 2+ debug. Idempotent.
    """
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    root = logging.getLogger("stainbench")
    root.setLevel(level)
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        handler = RichHandler(console=err_console, show_path=False, rich_tracebacks=True)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.propagate = False

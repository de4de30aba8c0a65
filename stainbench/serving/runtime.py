"""Where the bundled ``tritonserver`` lives and what it needs to run on this machine.

The PyPI wheel ``nvidia-pytriton`` ships the real Triton Inference Server (2.51):

- ``pytriton/tritonserver/bin/tritonserver``: the server binary;
- ``pytriton/tritonserver/backends/python/``: ``libtriton_python.so`` and
  ``triton_python_backend_utils.py`` (the python backend, without its stub);
- ``pytriton/tritonserver/python_backend_stubs/<major.minor>/triton_python_backend_stub``: one
  stub per Python version;
- ``nvidia_pytriton.libs/``: the shared libraries the binary and the stub link against.

:func:`prepare_backend_dir` assembles a private python-backend folder (with a fresh copy of
the stub: Triton 2.51 chmods the stub to owner-execute-only after a failed probe run), and
:func:`server_environment` builds the environment the stub needs (the venv's ``bin`` first on
``PATH`` so the stub's interpreter sees this venv's numpy; the wheel's libraries and Python's
``LIBDIR`` on ``LD_LIBRARY_PATH``).
"""

from __future__ import annotations

import errno
import importlib.util
import os
import shutil
import socket
import sys
import sysconfig
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from stainbench.errors import ServingError

#: Files of the python backend folder that Triton loads (besides the stub).
BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
STUB_NAME = "triton_python_backend_stub"


@dataclass(frozen=True)
class TritonInstall:
    """Paths of the Triton server bundled in the ``nvidia-pytriton`` wheel."""

    root: Path  #: ``.../site-packages/pytriton/tritonserver``
    binary: Path  #: ``root/bin/tritonserver``
    python_backend: Path  #: ``root/backends/python``
    stub: Path  #: the stub built for the running Python version
    libs: Path  #: ``.../site-packages/nvidia_pytriton.libs``


def python_version_tag() -> str:
    """``"3.11"`` for the running interpreter: the stub folder to use."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def find_triton() -> TritonInstall:
    """Locate the bundled server; :class:`ServingError` naming the missing piece otherwise."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServingError(
            "the Triton server is not installed: pip install nvidia-pytriton "
            "(or pass --url to use a running server)"
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    root = package / "tritonserver"
    tag = python_version_tag()
    install = TritonInstall(
        root=root,
        binary=root / "bin" / "tritonserver",
        python_backend=root / "backends" / "python",
        stub=root / "python_backend_stubs" / tag / STUB_NAME,
        libs=package.parent / "nvidia_pytriton.libs",
    )
    for path in (install.binary, *(install.python_backend / f for f in BACKEND_FILES)):
        if not path.is_file():
            raise ServingError(f"the nvidia-pytriton install is incomplete: {path} is missing")
    if not install.stub.is_file():
        raise ServingError(
            f"nvidia-pytriton has no python backend stub for Python {tag} ({install.stub}); "
            "use a Python version it ships a stub for (3.8-3.13)"
        )
    if not install.libs.is_dir():
        raise ServingError(f"the nvidia-pytriton libraries are missing: {install.libs}")
    return install


def prepare_backend_dir(install: TritonInstall, dest: Path) -> Path:
    """Write ``dest/python/{libtriton_python.so, triton_python_backend_utils.py, stub}``.

    Returns ``dest``, the value for ``--backend-directory``. The stub is always copied afresh
    and made ``0755``.
    """
    python_dir = dest / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for name in BACKEND_FILES:
        shutil.copy2(install.python_backend / name, python_dir / name)
    stub = python_dir / STUB_NAME
    if stub.exists():
        stub.unlink()
    shutil.copy2(install.stub, stub)
    stub.chmod(0o755)
    return dest


def server_environment(install: TritonInstall, base: Mapping[str, str] | None = None) -> dict:
    """The environment for ``tritonserver``: ``base`` (default ``os.environ``) plus

    - ``PATH``: the running interpreter's ``bin`` folder first (the stub runs ``python3``
      from ``PATH`` to find its site-packages, which must hold numpy < 2);
    - ``LD_LIBRARY_PATH``: the wheel's ``nvidia_pytriton.libs`` and Python's ``LIBDIR``
      (``libpython3.X.so``) before whatever was there.
    """
    env = dict(os.environ if base is None else base)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in (bin_dir, env.get("PATH", "")) if p)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    ld = [str(install.libs), libdir, env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in ld if p)
    return env


def has_gpu() -> bool:
    """True when an NVIDIA driver exposes at least one GPU (no CUDA import needed)."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


_HOST_HINT = "use 127.0.0.1 (this machine only), 0.0.0.0 (every interface) or one of its own IPs"


class BindError(ServingError):
    """``host``/``port`` cannot be bound; ``errno`` says why (``None``: the host does not
    resolve)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = code


def _bind_address(host: str) -> tuple[socket.AddressFamily, str]:
    """``(family, address)`` to bind for ``host`` (a name is resolved, IPv4 first).

    Raises :class:`BindError` when ``host`` does not resolve.
    """
    if host == "":
        return socket.AF_INET, "0.0.0.0"
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) and exc.strerror else exc
        raise BindError(f"cannot resolve host '{host}' ({reason}); {_HOST_HINT}") from None
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    family, *_, sockaddr = infos[0]
    return family, str(sockaddr[0])


def _bind(host: str, port: int, reuse: bool = False) -> socket.socket:
    """A socket bound to ``(host, port)``, or :class:`BindError` naming why it cannot be.

    Tells apart a host that does not resolve, an address that is not this machine's, a port
    that needs privileges and a port in use (the only case whose message says "in use").
    """
    family, address = _bind_address(host)
    s = socket.socket(family, socket.SOCK_STREAM)
    if reuse:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((address, port))
    except OSError as exc:
        s.close()
        what = f"port {port} on {host}" if port else host
        if exc.errno == errno.EADDRINUSE:
            message = f"{what} is already in use (another server?)"
        elif exc.errno == errno.EADDRNOTAVAIL:
            message = f"cannot bind to {host}: it is not an address of this machine; {_HOST_HINT}"
        elif exc.errno == errno.EACCES:
            message = f"{what} needs administrator rights (ports below 1024)"
        else:
            message = f"cannot bind to {what}: {exc.strerror or exc}"
        raise BindError(message, exc.errno) from None
    return s


def check_host(host: str) -> None:
    """:class:`ServingError` unless the server can bind to ``host`` (a name or an address):
    it must resolve and be an address of this machine (or a wildcard)."""
    if not host.strip():
        raise BindError(f"the host to bind is empty; {_HOST_HINT}")
    _bind(host, 0).close()


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports that are free on ``host`` right now (OS-assigned).

    Raises :class:`ServingError` when ``host`` does not resolve or is not this machine's.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sockets.append(_bind(host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def port_in_use(host: str, port: int) -> bool:
    """True when ``port`` cannot be bound on ``host`` because someone listens there.

    Raises :class:`BindError` when the reason is another one (the host does not resolve or
    is not this machine's, a privileged port, ...).
    """
    try:
        _bind(host, port, reuse=True).close()
    except BindError as exc:
        if exc.errno == errno.EADDRINUSE:
            return True
        raise
    return False

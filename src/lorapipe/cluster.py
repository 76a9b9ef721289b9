"""Ray for the document work: the extract stage's conversions (``extract.executor: ray``) and the synth
stage's local teacher (``synth.executor: ray``) run on a Ray cluster instead of this machine's processes.

    from lorapipe.cluster import ray_session
    with ray_session(None, num_cpus=2, param="extract.ray_address") as ray:
        print(ray.cluster_resources())

The cluster is the one that `address` (the stage's ``ray_address`` param) names, else the one that the
``RAY_ADDRESS`` environment variable names, else a local Ray started for the run on 127.0.0.1 and stopped
after it. A Ray already initialised in this process (the caller's own ``ray.init``) is used as it is and
left running. Nothing needs a shared filesystem: tasks receive their inputs' bytes and return results;
the driver (this process) writes every cache entry and output. Every node needs lorapipe with the
``ray`` extra installed at the same commit (the extract stage checks each worker's reader fingerprint).

Ray's own retries are off for lorapipe's tasks (``max_retries=0``): lorapipe decides what a crash or a
time-out means (a fallback converter, a retry on another teacher actor), as it does without Ray.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lorapipe import faults

INSTALL_HINT = "pip install 'lorapipe[ray]' (on this machine and on every node of the cluster)"
CONNECT_TIMEOUT_S = 5.0  # seconds to wait for the cluster's address to accept a TCP connection
DEFAULT_PORT = 6379  # Ray's GCS port when an address names no port (`ray start --head`'s default)
RAY_CLIENT_PORT = 10001  # Ray Client's default port (ray://host)


class ClusterError(RuntimeError):
    """Ray is missing, or the cluster an address names does not answer."""


class FingerprintMismatch(ClusterError):
    """A node reads a format with other code or library versions than this machine."""


def import_ray(param: str) -> Any:
    """The `ray` module; ClusterError naming `param` (the executor param that asked for it) and the
    install command when the ``ray`` extra is not installed."""
    try:
        import ray
    except ImportError:
        raise ClusterError(f"{param} is ray, but Ray is not installed: {INSTALL_HINT}") from None
    return ray


def cluster_address(address: str | None, param: str) -> tuple[str | None, str]:
    """The cluster to use and where its name came from: `address`, the value of the ``ray_address``
    param `param`, when set; else the ``RAY_ADDRESS`` environment variable; else ``(None, "local")`` (a
    Ray started for the run)."""
    if address:
        return address, param
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    return None, "local"


def _host_port(address: str, named: str = "the Ray address") -> tuple[str, int] | None:
    """``(host, port)`` of ``host:port``, ``host`` or ``ray://host[:port]``; None for ``auto``/``local``
    (Ray finds the cluster on this machine itself). ClusterError naming `named` (where the address came
    from) for anything else."""
    if address in ("auto", "local"):
        return None
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if not parts.hostname or port in (-1, 0) or parts.path not in ("", "/") or parts.scheme not in ("", "ray"):
        raise ClusterError(f"{named} {address!r} is not host:port, ray://host:port or auto")
    return parts.hostname, port or (RAY_CLIENT_PORT if parts.scheme == "ray" else DEFAULT_PORT)


# HTTP/2's client preface and an empty SETTINGS frame: a gRPC server (Ray's GCS, the Ray Client server)
# answers with a SETTINGS frame of its own (RFC 9113, section 3.4); a web server or anything else does not.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_SETTINGS_FRAME = 0x4


def _speaks_grpc(connection: socket.socket) -> bool:
    """Whether the server at the other end of `connection` answers HTTP/2's preface as gRPC servers do."""
    try:
        connection.sendall(_HTTP2_PREFACE)
        header = b""
        while len(header) < 9:
            chunk = connection.recv(9 - len(header))
            if not chunk:
                return False
            header += chunk
    except OSError:
        return False
    return header[3] == _SETTINGS_FRAME


def check_reachable(address: str, named: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise ClusterError, naming `address` and where it came from (`named`: its param, or RAY_ADDRESS),
    when it is malformed, no process accepts a TCP connection at it within `timeout_s` seconds, or what
    answers there is not a gRPC server (Ray's GCS and Ray Client are; a web server on that port is not;
    skipped under RAY_USE_TLS): checked before any work, since ``ray.init`` would retry for a minute, or
    forever, and then fail deep inside Ray."""
    target = _host_port(address, named)
    if target is None:
        return
    fix = (
        f"start one with `ray start --head` on that machine, fix {named}, or unset it to start a local Ray for the run"
    )
    try:
        with socket.create_connection(target, timeout=timeout_s) as connection:
            grpc = os.environ.get("RAY_USE_TLS", "0") not in ("0", "") or _speaks_grpc(connection)
    except OSError as exc:
        raise ClusterError(f"no Ray cluster answers at {address} (from {named}: {exc}); {fix}") from None
    if not grpc:
        raise ClusterError(
            f"what answers at {address} (from {named}) is not a Ray cluster (no gRPC server on that port; Ray's "
            f"default port is {DEFAULT_PORT}, Ray Client's {RAY_CLIENT_PORT} with ray://); {fix}"
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def scratch_folder(kind: str) -> Path:
    """A new temporary folder ``lorapipe-<kind>-<pid>-XXXX`` on this node for a task's or an actor's
    copy of its input (a document, a GGUF). Those of processes that are gone are removed first: a task
    killed mid-document (a crash, a time-out's cancel, a stopped driver) cannot remove its own, and
    copies of users' documents must not pile up on the nodes."""
    root = Path(tempfile.gettempdir())
    for old in root.glob(f"lorapipe-{kind}-*-*"):
        pid = old.name.split("-")[2]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"lorapipe-{kind}-{os.getpid()}-"))


def _runtime_env() -> dict:
    """What the cluster's workers need of this process's environment: the tests' LORAPIPE_FAULT."""
    value = os.environ.get(faults.FAULT_ENV)
    return {"env_vars": {faults.FAULT_ENV: value}} if value else {}


@contextlib.contextmanager
def ray_session(address: str | None, *, num_cpus: int, param: str) -> Iterator[Any]:
    """Yield the `ray` module, initialised on the cluster `cluster_address(address)` names, or on a local
    Ray with `num_cpus` CPUs on 127.0.0.1 when none is named; shut down on exit unless this process had
    initialised Ray before. `param`: the executor's address param, for messages.

    Raises ClusterError when Ray is not installed, or the named cluster does not answer (before any
    work: `check_reachable`) or refuses the connection."""
    ray = import_ray(param.rsplit(".", 1)[0] + ".executor")
    if ray.is_initialized():
        yield ray
        return
    target, named = cluster_address(address, param)
    options: dict[str, Any] = {
        "runtime_env": _runtime_env(),
        "logging_level": logging.WARNING,
        "configure_logging": True,
        "include_dashboard": False,
    }
    if target is None:
        options.update(address="local", num_cpus=num_cpus, _node_ip_address="127.0.0.1")
        where = f"a local Ray on 127.0.0.1 with {num_cpus} CPU(s), started for this run"
    else:
        check_reachable(target, named)
        options.update(address=target)
        options.pop("include_dashboard")  # a setting of the head node, not of a driver that joins it
        where = f"the Ray cluster at {target} (from {named})"
    environ_address = os.environ.pop("RAY_ADDRESS", None)  # ray.init would prefer it to `address`
    auth_mode = os.environ.get("RAY_AUTH_MODE")  # a local ray.init sets it to "token" for this process
    try:
        ray.init(**options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        hint = ""
        if target is not None and not os.environ.get("RAY_AUTH_MODE"):
            hint = (
                "; if the cluster uses token authentication (the default of `ray start` since Ray 2.5x), set "
                "RAY_AUTH_MODE=token here with the cluster's token in RAY_AUTH_TOKEN or ~/.ray/auth_token"
            )
        _restore("RAY_AUTH_MODE", auth_mode)
        raise ClusterError(f"could not join {where}: {exc}{hint}") from None
    finally:
        _restore("RAY_ADDRESS", environ_address)
    try:
        cpus = ray.cluster_resources().get("CPU", 0)
        nodes = sum(node["Alive"] for node in ray.nodes())
        print(f"[ray] on {where}: {nodes} node(s), {cpus:g} CPU(s)", flush=True)
        yield ray
    finally:
        ray.shutdown()
        _restore("RAY_AUTH_MODE", auth_mode)


def _restore(name: str, value: str | None) -> None:
    """Put environment variable `name` back to `value` (None: unset), as it was before Ray's init."""
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value

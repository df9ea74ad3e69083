"""Shared fixtures: the real model, and a real sidecar on a free localhost port.

The sidecar runs in-process on its own event loop thread (so tests can read its counters); tests
call it through the generated stubs over a real TCP socket, exactly like any client.
"""

from __future__ import annotations

import asyncio
import importlib.abc
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from certus.sidecar import config as config_mod


class _BareNameGuard(importlib.abc.MetaPathFinder):
    """The suite runs from the repository root, which puts the design card's folders on sys.path
    under their bare names (``sidecar``, ``kernels``, ``models``). The product imports them only as
    ``certus.<folder>``; a bare import would pass here and break the installed command, as it once did
    (a dependency's own top-level ``kernels`` shadowed ours). So a bare import fails the suite."""

    FOLDERS = frozenset({"sidecar", "kernels", "models"})

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname.partition(".")[0] in self.FOLDERS:
            raise ImportError(f"bare import of {fullname!r}: the package is 'certus.{fullname}'")
        return None


sys.meta_path.insert(0, _BareNameGuard())

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
# Commands run as a user runs them: the installed console script, from a directory outside the
# repository, with no PYTHONPATH (the repository must not be what makes an import work).
OUTSIDE = Path(tempfile.gettempdir())


def cli_argv(*args: object) -> list[str]:
    """argv of ``certus-sidecar ARGS`` through this environment's installed entry point."""
    from certus.sidecar.loadgen import console_script

    return [str(console_script()), *map(str, args)]


def cli_env(extra: "dict[str, str] | None" = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(extra or {})
    return env


def run_cli(
    *args: object, env: "dict[str, str] | None" = None, cwd: "Path | None" = None, timeout: float = 300
) -> "subprocess.CompletedProcess[str]":
    """``certus-sidecar ARGS`` to completion (outside the repository unless ``cwd`` says otherwise)."""
    return subprocess.run(
        cli_argv(*args), env=cli_env(env), cwd=cwd or OUTSIDE, capture_output=True, text=True, timeout=timeout
    )


def shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (expected ../shared/data beside the project)")
    return path


@pytest.fixture(scope="session")
def model_dir() -> Path:
    from certus.models.artifacts import ensure_model

    cfg = config_mod.Config()
    ensure_model(cfg.model.model_dir, "fp32")
    return cfg.model.model_dir


@pytest.fixture(scope="session")
def encoder(model_dir: Path) -> Any:
    from certus.models.encoder import OnnxEncoder

    return OnnxEncoder(model_dir, intra_op_threads=1)


def make_config(tmp: Path, **sections: dict[str, Any]) -> config_mod.Config:
    """A config whose every path is under ``tmp`` and which listens on a free loopback port."""
    base = {
        "server": {"address": "127.0.0.1:0", "grace_s": 2.0},
        "evidence": {"log_dir": tmp / "evidence", "key_path": tmp / "keys" / "signing.key"},
        "forwarder": {"file_path": tmp / "integrity" / "decisions.jsonl", "outbox_dir": tmp / "outbox"},
        "manifests": {"manifest_dir": tmp / "manifests", "reload_interval_s": 0.2},
        "model": {"intra_op_threads": 1},
        # in-process servers share this process's Presidio analyzer (loaded once); the PII worker
        # process, the shipped default, is exercised by the tests that run `certus-sidecar serve`
        # (lifecycle, fuzz, crash recovery, flood) and by tests/unit/guardrails/test_pii_process.py
        "guardrails": {"pii_process": False},
        "dashboard": {"state_dir": tmp / "dashboard", "index_interval_s": 0.2},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return config_mod.load(env={}, overrides=base)


class LoopThread:
    """An asyncio event loop on a background thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sidecar-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 120.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@dataclass
class RunningSidecar:
    cfg: config_mod.Config
    port: int
    app: Any
    server: Any
    loop: LoopThread
    channel: grpc.Channel
    stub: Any

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        from certus.sidecar.server.app import shutdown

        self.channel.close()
        self.loop.run(shutdown(self.server, self.app))
        self.loop.close()


def start_sidecar(cfg: config_mod.Config, encoder: Any = None, app: Any = None) -> RunningSidecar:
    from certus.sidecar.protos import pb_grpc
    from certus.sidecar.server.app import App, build_server

    lt = LoopThread()

    async def boot() -> tuple[Any, int, Any]:
        a = app or await App.create(cfg, encoder=encoder)
        server, port, a = await build_server(cfg, a)
        await server.start()
        return server, port, a

    server, port, a = lt.run(boot())
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return RunningSidecar(cfg, port, a, server, lt, channel, pb_grpc.EvaluatorStub(channel))


@pytest.fixture(scope="session")
def sidecar(tmp_path_factory: pytest.TempPathFactory, encoder: Any) -> Iterator[RunningSidecar]:
    """One real sidecar for the read-mostly integration tests (shadow mode, embedded default)."""
    cfg = make_config(tmp_path_factory.mktemp("sidecar"))
    running = start_sidecar(cfg, encoder=encoder)
    yield running
    running.stop()


# -- helpers shared by integration tests -----------------------------------------------------------


def field_violations(err: grpc.RpcError) -> dict[str, str]:
    """The google.rpc.BadRequest field violations of a failed call: {field: description}."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(err)
    assert status is not None, "no google.rpc.Status details"
    out: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            detail.Unpack(br)
            out.update({v.field: v.description for v in br.field_violations})
    return out


def manifest_doc(workspace: str, version: str, **fields: Any) -> dict[str, Any]:
    """A workspace manifest document (``fields`` override or add to the identifying ones)."""
    doc: dict[str, Any] = {
        "manifest_id": f"manifest_{workspace}_{version.replace('-', '_')}",
        "manifest_uri": f"certus://manifests/{workspace}/{version}",
        "workspace_id": workspace,
        "version": version,
        "signed_by": "tests@certus.example",
    }
    doc.update(fields)
    return doc


def put_atomic(path: Path, data: bytes) -> Path:
    """Replace ``path`` atomically (as a deploy tool or ConfigMap would), through a hidden temp file
    (the manifest store ignores hidden files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def write_manifest(manifest_dir: Path, workspace: str, version: str, **fields: Any) -> Path:
    """Write ``manifest_dir/<workspace>/<version>.json`` (canonical JSON) atomically."""
    from certus.sidecar.signing import canonical_json

    return put_atomic(manifest_dir / workspace / f"{version}.json", canonical_json(manifest_doc(workspace, version, **fields)))


def process_running(pid: int) -> bool:
    """Alive and not a zombie (a process that exited but was not reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_gone(pids: "set[int] | list[int]", within_s: float) -> list[int]:
    """Poll until none of ``pids`` runs or ``within_s`` passes; returns those still running."""
    import time

    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline and any(process_running(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if process_running(p)]


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a server a test starts)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(pred: Any, what: str, timeout_s: float = 30.0, step_s: float = 0.02) -> None:
    """Poll ``pred`` until true; AssertionError naming ``what`` after ``timeout_s``."""
    import time

    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for: {what}")
        time.sleep(step_s)


async def wait_until_async(pred: Any, what: str, timeout_s: float = 30.0, step_s: float = 0.01) -> None:
    """:func:`wait_until` for a coroutine: sleeps on the event loop between polls."""
    import time

    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for: {what}")
        await asyncio.sleep(step_s)

"""One ASGI app served by uvicorn on the sidecar's own event loop: the REST API and the dashboard.

Handlers await the same coroutines as the gRPC servicer (no second loop, no thread hop). The
sidecar owns the signals: uvicorn's handlers are not installed, and :meth:`stop` finishes the
requests in flight.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
import uvicorn

from certus.sidecar import errors

log = structlog.get_logger(__name__)


class UvicornListener:
    def __init__(self, asgi: Any, setting: str) -> None:
        self.asgi = asgi
        self.setting = setting  # the config field named in errors and logs, e.g. server.rest_address
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, address: str, *, ssl_certfile: str | None = None, ssl_keyfile: str | None = None) -> int:
        host, _, port = address.rpartition(":")
        config = uvicorn.Config(
            self.asgi,
            host=host.strip("[]") or "127.0.0.1",
            port=int(port),
            log_level="warning",
            access_log=False,
            lifespan="off",
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
        )
        server = uvicorn.Server(config)
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # the sidecar owns signals
        self._server = server
        self._task = asyncio.create_task(server.serve(), name=self.setting)
        while not server.started:
            if self._task.done():
                exc = self._task.exception() or OSError(f"cannot listen on {address}")
                raise errors.Fatal(f"{self.setting} {address}: {exc}")
            await asyncio.sleep(0.01)
        self.port = int(server.servers[0].sockets[0].getsockname()[1])
        log.info("http_listening", setting=self.setting, address=f"{config.host}:{self.port}")
        return self.port

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
            self._server = self._task = None

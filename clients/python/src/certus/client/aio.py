"""The asyncio client (``grpc.aio``): the same non-blocking contract as :class:`certus.client.sync.SidecarClient`.

Every coroutine returns a result and never raises into the application (cancellation of the
caller's own task still propagates, as asyncio requires). Besides gRPC's deadline, the whole call
is bounded by ``asyncio.wait_for`` (deadline + ``deadline_slack_ms``): if that wait runs out first the
result is skipped with ``client_timeout`` — the seed's §3.1.2 pattern. ``evaluate_in_background``
starts the evaluation as a task and returns it at once.

The channel is created on first use inside the running loop (``grpc.aio`` channels belong to a loop).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from typing import Any, Callable, Sequence

import grpc

from certus.client.protos import pb_grpc
from certus.client.sync import (
    SKIP_CLIENT_TIMEOUT,
    ClientOptions,
    Evaluation,
    Measurement,
    _Base,
    measurement_from_pb,
)


class _ClientTimeout(Exception):
    pass


class AsyncSidecarClient(_Base):
    def __init__(
        self,
        target: str | None = None,
        *,
        options: ClientOptions | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        clock: Callable[[], float] = time.monotonic,
        **overrides: Any,
    ) -> None:
        opts = options or ClientOptions()
        if target is not None:
            overrides["target"] = target
        if overrides:
            opts = ClientOptions(**{**asdict(opts), **overrides})
        super().__init__(opts, clock)
        self._credentials = credentials
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None
        self._tasks: set[asyncio.Task[Evaluation]] = set()

    def _get_stub(self) -> Any:
        if self._stub is None:
            o = self.options
            if self._credentials is not None:
                self._channel = grpc.aio.secure_channel(o.target, self._credentials, options=o.channel_options())
            else:
                self._channel = grpc.aio.insecure_channel(o.target, options=o.channel_options())
            self._stub = pb_grpc.EvaluatorStub(self._channel)
        return self._stub

    async def _call(self, method: str, req: Any, deadline_s: float) -> Any:
        stub = self._get_stub()
        coro = getattr(stub, method)(req, timeout=deadline_s, metadata=self.options.metadata())
        try:
            return await asyncio.wait_for(coro, deadline_s + self.options.deadline_slack_ms / 1000.0)
        except asyncio.TimeoutError as exc:
            raise _ClientTimeout() from exc

    async def evaluate(
        self,
        query: str,
        response: str,
        context: Sequence[str] | str = (),
        *,
        workspace_id: str | None = None,
        manifest_uri: str | None = None,
        mode: str | None = None,
        timeout_ms: int | None = None,
        trace_id: str = "",
        parent_span_id: str = "",
        request_id: str = "",
    ) -> Evaluation:
        t0 = time.perf_counter()
        started = self._start_evaluate(
            t0,
            query,
            response,
            context,
            workspace_id=workspace_id,
            manifest_uri=manifest_uri,
            mode=mode,
            timeout_ms=timeout_ms,
            trace_id=trace_id,
            parent_span_id=parent_span_id,
            request_id=request_id,
        )
        if isinstance(started, Evaluation):
            return started
        req, deadline_s = started
        try:
            resp = await self._call("Evaluate", req, deadline_s)
        except _ClientTimeout:
            self.breaker.record_failure()
            self._count(SKIP_CLIENT_TIMEOUT)
            return Evaluation(
                skipped=True,
                skip_reason=SKIP_CLIENT_TIMEOUT,
                trace_id=trace_id,
                request_id=request_id,
                latency_ms=(time.perf_counter() - t0) * 1000.0,
            )
        except asyncio.CancelledError:
            self.breaker.record_failure()  # release a half-open probe slot
            raise
        except Exception as exc:  # noqa: BLE001
            return self._failed(exc, t0, probe=True, trace_id=trace_id, request_id=request_id)
        try:
            return self._succeeded(resp, t0)
        except Exception as exc:  # noqa: BLE001
            return self._failed(exc, t0, probe=True, trace_id=trace_id, request_id=request_id)

    def evaluate_in_background(self, query: str, response: str, context: Sequence[str] | str = (), **kw: Any) -> "asyncio.Task[Evaluation]":
        """Start ``evaluate`` as a task and return it at once (its result never is an exception,
        unless the task itself is cancelled). A reference is kept until it finishes."""
        task = asyncio.get_running_loop().create_task(self.evaluate(query, response, context, **kw))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def measure(
        self, text1: str, text2: str, threshold: float | None = None, *, timeout_ms: int | None = None
    ) -> Measurement:
        t0 = time.perf_counter()
        started = self._start_measure(t0, text1, text2, threshold, timeout_ms)
        if isinstance(started, Measurement):
            return started
        req, deadline_s = started
        try:
            resp = await self._call("Measure", req, deadline_s)
        except _ClientTimeout:
            self.breaker.record_failure()
            self._count(SKIP_CLIENT_TIMEOUT)
            return Measurement(skipped=True, skip_reason=SKIP_CLIENT_TIMEOUT)
        except asyncio.CancelledError:
            self.breaker.record_failure()
            raise
        except Exception as exc:  # noqa: BLE001
            return self._measure_failed(exc, t0, probe=True)
        self.breaker.record_success()
        self._count(None)
        return measurement_from_pb(resp, (time.perf_counter() - t0) * 1000.0)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None

    async def __aenter__(self) -> "AsyncSidecarClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


__all__ = ["AsyncSidecarClient"]

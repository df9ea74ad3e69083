"""The call wrapper the SDK integrations share: call the SDK, read the answer (or accumulate a
stream), submit ``(query, answer, context)`` for evaluation, hand the SDK's own result back
unchanged. Sync and async calls, streams included; the SDK's errors propagate untouched and an
evaluation problem never reaches the caller."""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any, AsyncIterator, Callable, Iterator, Mapping, Sequence

from certus.client.integrations._common import OnEvaluation, Submitter
from certus.client.sync import SidecarClient

log = logging.getLogger(__name__)

Extract = Callable[[Any], str]  # SDK result (or stream chunk) -> text


class _TracedStream:
    """Iterates the SDK's stream (sync and async), collects the text, submits at the end; every
    other attribute (``close``, ``response``, context manager) is the SDK stream's."""

    def __init__(self, stream: Any, piece: Extract, done: Callable[[str], None]) -> None:
        self._stream, self._piece, self._done, self._parts = stream, piece, done, []  # type: ignore[var-annotated]

    def _finish(self) -> None:
        if self._done is not None:
            done, self._done = self._done, None  # type: ignore[assignment]
            done("".join(self._parts))

    def __iter__(self) -> Iterator[Any]:
        for chunk in self._stream:
            self._parts.append(self._piece(chunk))
            yield chunk
        self._finish()

    async def __aiter__(self) -> AsyncIterator[Any]:
        async for chunk in self._stream:
            self._parts.append(self._piece(chunk))
            yield chunk
        self._finish()

    def __enter__(self) -> "_TracedStream":
        self._stream.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._stream.__exit__(*exc)

    async def __aenter__(self) -> "_TracedStream":
        await self._stream.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._stream.__aexit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def wrap(
    create: Callable[..., Any],
    *,
    query_of: Callable[[Mapping[str, Any]], str],
    answer_of: Extract,
    piece_of: Extract,
    sidecar: "str | SidecarClient | Mapping[str, Any]",
    context: Sequence[str] | Callable[[Mapping[str, Any]], Sequence[str]] = (),
    on_evaluation: OnEvaluation | None = None,
    **evaluate_kw: Any,
) -> Callable[..., Any]:
    """``create`` with evaluation. A call may pass ``certus_context=[...]`` (the chunks the answer
    should rest on; taken out before the SDK sees the call), else ``context`` (a list, or a function
    of the call's keyword arguments) gives them."""
    submitter = Submitter(sidecar, on_evaluation)

    def prepare(kwargs: dict[str, Any]) -> Callable[[str], None]:
        ctx = kwargs.pop("certus_context", None)
        if ctx is None:
            ctx = context(kwargs) if callable(context) else context
        try:
            query = query_of(kwargs)
        except Exception:  # noqa: BLE001 - an unexpected message shape is no evaluation, not an error
            query = ""

        def send(answer: str) -> None:
            if query and answer:
                try:
                    submitter.submit(query, answer, list(ctx), **evaluate_kw)
                except Exception as exc:  # noqa: BLE001 - evaluation never reaches the caller
                    log.warning("certus_submit_failed error_type=%s", type(exc).__name__)

        return send

    def finish(result: Any, send: Callable[[str], None], streaming: bool) -> Any:
        if streaming:
            return _TracedStream(result, _safe(piece_of), send)
        send(_safe(answer_of)(result))
        return result

    @functools.wraps(create)
    def traced(*args: Any, **kwargs: Any) -> Any:
        send = prepare(kwargs)
        streaming = bool(kwargs.get("stream"))
        result = create(*args, **kwargs)
        if inspect.isawaitable(result):  # an async client (its create may not be a coroutine function)

            async def later() -> Any:
                return finish(await result, send, streaming)

            return later()
        return finish(result, send, streaming)

    traced.submitter = submitter  # type: ignore[attr-defined]
    return traced


def _safe(fn: Extract) -> Extract:
    def read(x: Any) -> str:
        try:
            return fn(x) or ""
        except Exception:  # noqa: BLE001 - a shape we do not know yields no text
            return ""

    return read


def last_user_text(messages: Any, system: Any = None) -> str:
    """The text of the last ``user`` message (a string, or the text parts of a content list)."""
    for m in reversed(list(messages or [])):
        role = m.get("role") if isinstance(m, Mapping) else getattr(m, "role", None)
        if role != "user":
            continue
        content = m.get("content") if isinstance(m, Mapping) else getattr(m, "content", None)
        if isinstance(content, str):
            return content
        parts = []
        for p in content or []:
            if isinstance(p, Mapping) and p.get("type") in ("text", "input_text"):
                parts.append(str(p.get("text", "")))
        return "\n".join(parts)
    return ""

"""Anthropic: evaluate messages made with the official SDK (``certus-client[anthropic]``).

    from anthropic import Anthropic
    from certus.client.integrations.anthropic import trace_message

    client = Anthropic()
    create = trace_message(client.messages.create, sidecar="127.0.0.1:50051", workspace_id="acme")
    message = create(model="claude-...", max_tokens=512, messages=[...], certus_context=retrieved_chunks)

Works the same with ``AsyncAnthropic`` and with ``stream=True`` (the ``text_delta`` events are
collected as they pass; the evaluation is sent when the stream ends). The query is the last user
message; the answer is the text blocks of the reply. The SDK's result, stream and errors reach the
caller unchanged; evaluation runs off the call's path.
"""

from __future__ import annotations

from typing import Any, Callable

from certus.client.integrations._wrap import last_user_text, wrap


def _answer(message: Any) -> str:
    return "".join(block.text for block in message.content if getattr(block, "type", "") == "text")


def _piece(event: Any) -> str:
    if getattr(event, "type", "") == "content_block_delta" and getattr(event.delta, "type", "") == "text_delta":
        return str(event.delta.text)
    return ""


def trace_message(create: Callable[..., Any], **options: Any) -> Callable[..., Any]:
    """``client.messages.create`` with evaluation (options as for ``trace_completion``)."""
    return wrap(
        create,
        query_of=lambda kw: last_user_text(kw.get("messages")),
        answer_of=_answer,
        piece_of=_piece,
        sidecar=options.pop("sidecar", "127.0.0.1:50051"),
        **options,
    )

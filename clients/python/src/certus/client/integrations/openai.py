"""OpenAI: evaluate chat completions made with the official SDK (``certus-client[openai]``).

    from openai import OpenAI
    from certus.client.integrations.openai import trace_completion

    client = OpenAI()
    create = trace_completion(client.chat.completions.create, sidecar="127.0.0.1:50051", workspace_id="acme")
    completion = create(model="gpt-4o-mini", messages=[...], certus_context=retrieved_chunks)

Works the same with ``AsyncOpenAI`` (``await create(...)``) and with ``stream=True`` (the chunks'
``delta.content`` are collected as they pass; the evaluation is sent when the stream ends). The
query is the last user message; the answer is the first choice's message content. The SDK's result,
stream and errors reach the caller unchanged; evaluation runs off the call's path.
"""

from __future__ import annotations

from typing import Any, Callable

from certus.client.integrations._wrap import last_user_text, wrap


def trace_completion(create: Callable[..., Any], **options: Any) -> Callable[..., Any]:
    """``client.chat.completions.create`` with evaluation (options: ``sidecar``, ``context``,
    ``on_evaluation`` and Evaluate's own, e.g. ``workspace_id``, ``manifest_uri``)."""
    return wrap(
        create,
        query_of=lambda kw: last_user_text(kw.get("messages")),
        answer_of=lambda r: r.choices[0].message.content,
        piece_of=lambda chunk: chunk.choices[0].delta.content if chunk.choices else "",
        sidecar=options.pop("sidecar", "127.0.0.1:50051"),
        **options,
    )

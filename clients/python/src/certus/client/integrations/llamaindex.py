"""LlamaIndex: evaluate every query-engine answer, through LlamaIndex's instrumentation API
(``certus-client[llamaindex]``).

    from certus.client.integrations.llamaindex import instrument

    handler = instrument("127.0.0.1:50051", workspace_id="acme")   # once, at start-up
    response = query_engine.query("Who gave their name to Normandy?")

``instrument`` adds a :class:`CertusEventHandler` to LlamaIndex's root dispatcher. Between a
``QueryStartEvent`` and its ``QueryEndEvent`` it collects the text of every node a retriever returned
(``RetrievalEndEvent``); at the end it submits (query, ``str(response)``, those texts) for evaluation
off the caller's path. Queries nest (a sub-question engine): each level is evaluated with its own
retrievals. ``on_evaluation(evaluation)`` receives results; ``handler.futures`` holds them.
"""

from __future__ import annotations

import contextvars
from typing import Any, Mapping

from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.query import QueryEndEvent, QueryStartEvent
from llama_index.core.instrumentation.events.retrieval import RetrievalEndEvent
from pydantic import PrivateAttr

from certus.client.integrations._common import OnEvaluation, Submitter
from certus.client.sync import SidecarClient

# the queries in progress in this thread / task, innermost last: (query text, retrieved texts)
_OPEN: contextvars.ContextVar[tuple[tuple[str, list[str]], ...]] = contextvars.ContextVar("certus_llamaindex_queries", default=())


def _query_text(query: Any) -> str:
    return query if isinstance(query, str) else str(getattr(query, "query_str", "") or "")


class CertusEventHandler(BaseEventHandler):
    _submitter: Submitter = PrivateAttr()
    _evaluate_kw: dict[str, Any] = PrivateAttr(default_factory=dict)

    def __init__(self, sidecar: "str | SidecarClient | Mapping[str, Any]" = "127.0.0.1:50051", *, on_evaluation: OnEvaluation | None = None, **evaluate_kw: Any) -> None:
        super().__init__()
        self._submitter = Submitter(sidecar, on_evaluation)
        self._evaluate_kw = evaluate_kw

    @classmethod
    def class_name(cls) -> str:
        return "CertusEventHandler"

    @property
    def futures(self) -> list[Any]:
        return self._submitter.futures

    def handle(self, event: Any, **kwargs: Any) -> None:
        open_ = _OPEN.get()
        if isinstance(event, QueryStartEvent):
            _OPEN.set(open_ + ((_query_text(event.query), []),))
        elif isinstance(event, RetrievalEndEvent) and open_:
            open_[-1][1].extend(n.node.get_content() for n in event.nodes if n.node.get_content())
        elif isinstance(event, QueryEndEvent) and open_:
            (query, context), rest = open_[-1], open_[:-1]
            _OPEN.set(rest)
            answer = str(event.response or "")
            if query and answer:
                self._submitter.submit(query, answer, context, **self._evaluate_kw)


def instrument(sidecar: "str | SidecarClient | Mapping[str, Any]" = "127.0.0.1:50051", **options: Any) -> CertusEventHandler:
    """Add a :class:`CertusEventHandler` to LlamaIndex's root dispatcher and return it."""
    handler = CertusEventHandler(sidecar, **options)
    get_dispatcher().add_event_handler(handler)
    return handler

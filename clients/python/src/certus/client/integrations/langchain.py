"""LangChain: send each retrieval-augmented answer to the sidecar (``certus-client[langchain]``).

    from certus.client.integrations.langchain import CertusCallbackHandler

    handler = CertusCallbackHandler("127.0.0.1:50051", workspace_id="acme")
    answer = rag_chain.invoke(question, config={"callbacks": [handler]})

The handler follows one top-level run (a chain invoked with it): the query is the run's input (a
string, or its ``question`` / ``query`` / ``input`` key), the context is every document a retriever
returned inside that run (``page_content``), and the answer is the run's output (a string, a
message's ``content``, or its ``answer`` / ``output`` / ``text`` / ``result`` key). When the top-level
run ends, the triple is submitted for evaluation off the chain's path; ``on_evaluation(evaluation)``
receives the result and ``handler.futures`` holds them. A run without a query or an answer is not
sent. The handler never raises into the chain.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document

from certus.client.integrations._common import OnEvaluation, Submitter
from certus.client.sync import SidecarClient

log = logging.getLogger(__name__)
QUERY_KEYS = ("question", "query", "input")
ANSWER_KEYS = ("answer", "output", "text", "result")


def _text(value: Any, keys: Sequence[str]) -> str:
    if isinstance(value, str):
        return value
    content = getattr(value, "content", None)  # an AIMessage / ChatMessage
    if isinstance(content, str):
        return content
    if isinstance(value, Mapping):
        for k in keys:
            if k in value:
                return _text(value[k], keys)
    return ""


class CertusCallbackHandler(BaseCallbackHandler):
    raise_error = False  # LangChain: a handler failure is logged, never raised into the chain

    def __init__(
        self,
        sidecar: "str | SidecarClient | Mapping[str, Any]" = "127.0.0.1:50051",
        *,
        on_evaluation: OnEvaluation | None = None,
        **evaluate_kw: Any,
    ) -> None:
        self._submitter = Submitter(sidecar, on_evaluation)
        self._evaluate_kw = evaluate_kw
        self._root: dict[UUID, UUID] = {}  # run -> its top-level run
        self._runs: dict[UUID, dict[str, Any]] = {}  # top-level run -> query, context

    @property
    def futures(self) -> list[Any]:
        return self._submitter.futures

    def _enter(self, run_id: UUID, parent_run_id: UUID | None) -> UUID:
        root = self._root.get(parent_run_id, parent_run_id) if parent_run_id is not None else run_id
        self._root[run_id] = root
        return root

    def on_chain_start(self, serialized: dict[str, Any], inputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kw: Any) -> None:
        root = self._enter(run_id, parent_run_id)
        if root == run_id:
            self._runs[run_id] = {"query": _text(inputs, QUERY_KEYS), "context": []}

    def on_retriever_start(self, serialized: dict[str, Any], query: str, *, run_id: UUID, parent_run_id: UUID | None = None, **kw: Any) -> None:
        root = self._enter(run_id, parent_run_id)
        run = self._runs.setdefault(root, {"query": query, "context": []})
        run["query"] = run["query"] or query

    def on_retriever_end(self, documents: Sequence[Document], *, run_id: UUID, parent_run_id: UUID | None = None, **kw: Any) -> None:
        run = self._runs.get(self._root.get(run_id, run_id))
        if run is not None:
            run["context"].extend(d.page_content for d in documents if d.page_content)

    def on_llm_start(self, serialized: dict[str, Any], prompts: list[str], *, run_id: UUID, parent_run_id: UUID | None = None, **kw: Any) -> None:
        self._enter(run_id, parent_run_id)

    def on_chat_model_start(self, serialized: dict[str, Any], messages: list[list[Any]], *, run_id: UUID, parent_run_id: UUID | None = None, **kw: Any) -> None:
        self._enter(run_id, parent_run_id)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kw: Any) -> None:
        if parent_run_id is not None:
            return
        run = self._runs.pop(run_id, None)
        self._forget(run_id)
        if run is None:
            return
        answer = _text(outputs, ANSWER_KEYS)
        if not run["query"] or not answer:
            log.info("certus_langchain_run_not_sent has_query=%s has_answer=%s", bool(run["query"]), bool(answer))
            return
        self._submitter.submit(run["query"], answer, run["context"], **self._evaluate_kw)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None, **kw: Any) -> None:
        if parent_run_id is None:
            self._runs.pop(run_id, None)
            self._forget(run_id)

    def _forget(self, root: UUID) -> None:
        for run in [r for r, top in self._root.items() if top == root]:
            del self._root[run]

"""The framework integrations with the frameworks' own classes, against the real sidecar.

- LangChain: a real LCEL RAG chain (a ``BaseRetriever``, a ``ChatPromptTemplate``, LangChain's own
  ``FakeListChatModel`` as the LLM, ``StrOutputParser``) run with ``CertusCallbackHandler``: the query,
  the retrieved documents and the answer reach the sidecar and come back scored.
- LlamaIndex: a real ``RetrieverQueryEngine`` over a ``BaseRetriever`` with LlamaIndex's own
  ``MockLLM`` (whose answer is filler text), observed through the instrumentation API.
- OpenAI and Anthropic: the official SDK clients (sync and async) over an httpx mock transport that
  answers as the APIs do (JSON, and server-sent events for ``stream=True``); the wrapped calls return
  the SDK's own objects unchanged and each call is evaluated.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnablePassthrough
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.retrievers import BaseRetriever as LlamaRetriever
from llama_index.core.schema import NodeWithScore, TextNode

from certus.client.integrations.anthropic import trace_message
from certus.client.integrations.langchain import CertusCallbackHandler
from certus.client.integrations.llamaindex import instrument
from certus.client.integrations.openai import trace_completion
from certus.sidecar.evidence.records import iter_log

QUERY = "Who gave their name to Normandy?"
ANSWER = "The Normans gave their name to Normandy, a region in France."
PIECES = ["The Normans gave their name ", "to Normandy, a region in France."]
CONTEXT = ["The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in France."]


def _scored(evaluations: list[Any], sidecar: Any, n: int) -> None:
    assert len(evaluations) == n, evaluations
    logged = {r.evidence_id for r in iter_log(sidecar.cfg.evidence.log_dir)}
    for ev in evaluations:
        assert not ev.skipped, ev
        assert ev.metrics["faithfulness"] > 0.7 and ev.evidence_id in logged


class Docs(BaseRetriever):
    def _get_relevant_documents(self, query: str, *, run_manager: Any) -> list[Document]:
        return [Document(page_content=c) for c in CONTEXT]


def test_langchain_rag_chain_is_evaluated(sidecar: Any) -> None:
    prompt = ChatPromptTemplate.from_template("Answer from the context.\nContext: {context}\nQuestion: {question}")
    llm = FakeListChatModel(responses=[ANSWER, "Paris."])
    chain = (
        {"context": Docs() | (lambda docs: "\n".join(d.page_content for d in docs)), "question": RunnablePassthrough()}
        | prompt
        | llm
        | StrOutputParser()
    )
    handler = CertusCallbackHandler(sidecar.target, workspace_id="langchain", timeout_ms=20000)
    assert chain.invoke(QUERY, config={"callbacks": [handler]}) == ANSWER
    (fut,) = handler.futures
    ev = fut.result(timeout=60)
    _scored([ev], sidecar, 1)
    assert ev.metrics["context_relevance"] > 0.5 and ev.metrics["context_precision"] == 1.0  # the retrieved document is the context
    # an answer the context does not support: evaluated, and faithfulness says so
    assert chain.invoke("What is the capital of France?", config={"callbacks": [handler]}) == "Paris."
    low = handler.futures[1].result(timeout=60)
    assert not low.skipped and low.metrics["faithfulness"] < 0.7


class Nodes(LlamaRetriever):
    def _retrieve(self, query_bundle: Any) -> list[NodeWithScore]:
        return [NodeWithScore(node=TextNode(text=c), score=1.0) for c in CONTEXT]


def test_llamaindex_query_engine_is_evaluated(sidecar: Any) -> None:
    from llama_index.core.instrumentation import get_dispatcher

    got: list[Any] = []
    handler = instrument({"target": sidecar.target, "workspace_id": "llamaindex", "timeout_ms": 20000}, on_evaluation=got.append)
    try:
        engine = RetrieverQueryEngine.from_args(Nodes(), llm=MockLLM(max_tokens=8))
        answer = str(engine.query(QUERY))
        (fut,) = handler.futures
        ev = fut.result(timeout=60)
    finally:
        get_dispatcher().event_handlers.remove(handler)
    assert answer.split()[0] == "text"  # MockLLM's filler, not an answer from the context
    assert not ev.skipped and ev.evidence_id.startswith("sha256:")
    assert ev.metrics["context_relevance"] > 0.5  # the retrieved node reached the sidecar as context
    assert ev.metrics["faithfulness"] < 0.5 and not ev.passed  # and the filler is judged unsupported


def _openai_api(request: httpx2.Request) -> httpx2.Response:
    body = json.loads(request.content)
    assert body["messages"][-1]["content"] == QUERY and "certus_context" not in body  # taken out before the SDK
    if body.get("stream"):
        chunks = [
            {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": p} if i == 0 else {"content": p}, "finish_reason": None}]}
            for i, p in enumerate(PIECES)
        ]
        chunks.append({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        sse = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return httpx2.Response(200, content=sse.encode(), headers={"content-type": "text/event-stream"})
    return httpx2.Response(
        200,
        json={
            "id": "c1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21},
        },
    )


def _anthropic_api(request: httpx2.Request) -> httpx2.Response:
    body = json.loads(request.content)
    assert "certus_context" not in body
    if body.get("stream"):
        events = [
            ("message_start", {"type": "message_start", "message": {"id": "m1", "type": "message", "role": "assistant", "model": "c", "content": [],
                                                                     "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 9, "output_tokens": 1}}}),
            ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            *[("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}) for p in PIECES],
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 12}}),
            ("message_stop", {"type": "message_stop"}),
        ]
        sse = "".join(f"event: {e}\ndata: {json.dumps(d)}\n\n" for e, d in events)
        return httpx2.Response(200, content=sse.encode(), headers={"content-type": "text/event-stream"})
    return httpx2.Response(
        200,
        json={"id": "m1", "type": "message", "role": "assistant", "model": "c", "content": [{"type": "text", "text": ANSWER}],
              "stop_reason": "end_turn", "stop_sequence": None, "usage": {"input_tokens": 9, "output_tokens": 12}},
    )


def _wait_for(evaluations: list[Any], n: int) -> None:
    import time

    deadline = time.time() + 60
    while len(evaluations) < n and time.time() < deadline:
        time.sleep(0.02)


def test_openai_sdk_calls_are_evaluated(sidecar: Any) -> None:
    got: list[Any] = []
    messages = [{"role": "system", "content": "Answer from the context."}, {"role": "user", "content": QUERY}]
    opts = {"sidecar": {"target": sidecar.target, "workspace_id": "openai", "timeout_ms": 20000}, "on_evaluation": got.append}
    client = openai.OpenAI(api_key="test", base_url="http://api.test/v1", http_client=httpx2.Client(transport=httpx2.MockTransport(_openai_api)))
    create = trace_completion(client.chat.completions.create, **opts)
    completion = create(model="gpt-test", messages=messages, certus_context=CONTEXT)
    assert isinstance(completion, openai.types.chat.ChatCompletion) and completion.choices[0].message.content == ANSWER
    with create(model="gpt-test", messages=messages, certus_context=CONTEXT, stream=True) as stream:
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == ANSWER

    async def run_async() -> None:
        aclient = openai.AsyncOpenAI(api_key="test", base_url="http://api.test/v1", http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(_openai_api)))
        acreate = trace_completion(aclient.chat.completions.create, **opts)
        assert (await acreate(model="gpt-test", messages=messages, certus_context=CONTEXT)).choices[0].message.content == ANSWER
        stream = await acreate(model="gpt-test", messages=messages, certus_context=CONTEXT, stream=True)
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == ANSWER

    asyncio.run(run_async())
    _wait_for(got, 4)
    _scored(got, sidecar, 4)


def test_anthropic_sdk_calls_are_evaluated(sidecar: Any) -> None:
    got: list[Any] = []
    opts = {"sidecar": {"target": sidecar.target, "workspace_id": "anthropic", "timeout_ms": 20000}, "on_evaluation": got.append}
    client = anthropic.Anthropic(api_key="test", base_url="http://api.test", http_client=httpx2.Client(transport=httpx2.MockTransport(_anthropic_api)))
    create = trace_message(client.messages.create, **opts)
    blocks = [{"role": "user", "content": [{"type": "text", "text": QUERY}]}]
    message = create(model="claude-test", max_tokens=256, messages=blocks, certus_context=CONTEXT)
    assert isinstance(message, anthropic.types.Message) and message.content[0].text == ANSWER
    stream = create(model="claude-test", max_tokens=256, messages=[{"role": "user", "content": QUERY}], certus_context=CONTEXT, stream=True)
    assert [e.type for e in stream].count("content_block_delta") == 2

    async def run_async() -> None:
        aclient = anthropic.AsyncAnthropic(api_key="test", base_url="http://api.test", http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(_anthropic_api)))
        acreate = trace_message(aclient.messages.create, **opts)
        assert (await acreate(model="claude-test", max_tokens=256, messages=blocks, certus_context=CONTEXT)).content[0].text == ANSWER
        astream = await acreate(model="claude-test", max_tokens=256, messages=blocks, certus_context=CONTEXT, stream=True)
        assert len([e async for e in astream]) == 7

    asyncio.run(run_async())
    _wait_for(got, 4)
    _scored(got, sidecar, 4)


def test_sdk_errors_reach_the_caller_unchanged_and_nothing_is_sent(sidecar: Any) -> None:
    got: list[Any] = []

    def down(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(401, json={"error": {"message": "bad key", "type": "invalid_request_error"}})

    client = openai.OpenAI(api_key="test", base_url="http://api.test/v1", http_client=httpx2.Client(transport=httpx2.MockTransport(down)), max_retries=0)
    create = trace_completion(client.chat.completions.create, sidecar=sidecar.target, on_evaluation=got.append)
    with pytest.raises(openai.AuthenticationError):
        create(model="gpt-test", messages=[{"role": "user", "content": QUERY}], certus_context=CONTEXT)
    assert got == [] and create.submitter.futures == []  # type: ignore[attr-defined]

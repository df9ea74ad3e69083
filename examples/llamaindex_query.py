"""A LlamaIndex query engine whose every answer is evaluated by the sidecar.

    make serve
    pip install './clients/python[llamaindex]'
    python examples/llamaindex_query.py

The retriever and the LLM are stand-ins so the example runs offline: one fixed node, and a tiny
CustomLLM that answers from it; put your index's retriever and your LLM in their place.
"""

from typing import Any

from llama_index.core.llms import CompletionResponse, CustomLLM, LLMMetadata
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, TextNode

from certus.client.integrations.llamaindex import instrument

TEXT = "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in France."


class Docs(BaseRetriever):
    def _retrieve(self, query_bundle: Any) -> list[NodeWithScore]:
        return [NodeWithScore(node=TextNode(text=TEXT), score=1.0)]


class Echo(CustomLLM):
    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="echo")

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kw: Any) -> CompletionResponse:
        return CompletionResponse(text="The Normans gave their name to Normandy, a region in France.")

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kw: Any) -> Any:
        yield self.complete(prompt)


handler = instrument("127.0.0.1:50051", workspace_id="acme")  # once, at start-up
engine = RetrieverQueryEngine.from_args(Docs(), llm=Echo())
print("answer:", engine.query("Who gave their name to Normandy?"))
ev = handler.futures[0].result(timeout=30)
print("evaluation:", ev.outcome, ev.evidence_id, {k: round(v, 3) for k, v in ev.metrics.items() if k in ("faithfulness", "answer_relevancy")})

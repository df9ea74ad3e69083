"""A LangChain RAG chain whose every answer is evaluated by the sidecar.

    make serve                                   # a sidecar on 127.0.0.1:50051
    pip install './clients/python[langchain]'
    python examples/langchain_rag.py

The retriever and the LLM here are stand-ins (a fixed document, LangChain's FakeListChatModel) so
the example runs offline; put your own retriever and chat model in their place. The three lines that
matter are marked.
"""

from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnablePassthrough

from certus.client.integrations.langchain import CertusCallbackHandler  # 1


class Docs(BaseRetriever):
    def _get_relevant_documents(self, query, *, run_manager):
        return [Document(page_content="The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in France.")]


prompt = ChatPromptTemplate.from_template("Answer from the context.\nContext: {context}\nQuestion: {question}")
llm = FakeListChatModel(responses=["The Normans gave their name to Normandy, a region in France."])
chain = {"context": Docs() | (lambda docs: "\n".join(d.page_content for d in docs)), "question": RunnablePassthrough()} | prompt | llm | StrOutputParser()

handler = CertusCallbackHandler("127.0.0.1:50051", workspace_id="acme")  # 2
answer = chain.invoke("Who gave their name to Normandy?", config={"callbacks": [handler]})  # 3
print("answer:", answer)
ev = handler.futures[0].result(timeout=30)
print("evaluation:", {"passed": ev.passed, "outcome": ev.outcome, "evidence_id": ev.evidence_id, "skipped": ev.skipped, "skip_reason": ev.skip_reason})
print("metrics:", {k: round(v, 3) for k, v in ev.metrics.items()})

"""OpenAI chat completions evaluated by the sidecar (sync, and streamed).

    make serve
    pip install './clients/python[openai]'
    OPENAI_API_KEY=... python examples/openai_chat.py       # without a key: a canned local answer

Without ``OPENAI_API_KEY`` the SDK talks to an in-process httpx mock that answers as the API does,
so the example runs offline; with a key it calls the real API.
"""

import json
import os

import httpx2
import openai

from certus.client.integrations.openai import trace_completion

CONTEXT = ["The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in France."]


def canned(request: httpx2.Request) -> httpx2.Response:
    answer = "The Normans gave their name to Normandy, a region in France."
    if json.loads(request.content).get("stream"):
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "local", "choices": [{"index": 0, "delta": {"content": answer}, "finish_reason": "stop"}]}
        return httpx2.Response(200, content=f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode(), headers={"content-type": "text/event-stream"})
    return httpx2.Response(200, json={"id": "c", "object": "chat.completion", "created": 0, "model": "local",
                                       "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]})


if os.environ.get("OPENAI_API_KEY"):
    client = openai.OpenAI()
else:
    client = openai.OpenAI(api_key="offline", base_url="http://local/v1", http_client=httpx2.Client(transport=httpx2.MockTransport(canned)))

evaluations = []
create = trace_completion(client.chat.completions.create, sidecar="127.0.0.1:50051", workspace_id="acme", on_evaluation=evaluations.append)
messages = [{"role": "system", "content": "Answer from this context: " + CONTEXT[0]}, {"role": "user", "content": "Who gave their name to Normandy?"}]
completion = create(model="gpt-4o-mini", messages=messages, certus_context=CONTEXT)
print("answer:", completion.choices[0].message.content)
streamed = "".join(c.choices[0].delta.content or "" for c in create(model="gpt-4o-mini", messages=messages, certus_context=CONTEXT, stream=True) if c.choices)
print("streamed:", streamed)
for fut in create.submitter.futures:
    ev = fut.result(timeout=30)
    print("evaluation:", ev.outcome, ev.evidence_id, {k: round(v, 3) for k, v in ev.metrics.items() if k in ("faithfulness", "answer_relevancy")})

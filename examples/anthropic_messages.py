"""Anthropic messages evaluated by the sidecar (sync, and streamed).

    make serve
    pip install './clients/python[anthropic]'
    ANTHROPIC_API_KEY=... python examples/anthropic_messages.py   # without a key: a canned local answer
"""

import json
import os

import anthropic
import httpx2

from certus.client.integrations.anthropic import trace_message

CONTEXT = ["The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in France."]
ANSWER = "The Normans gave their name to Normandy, a region in France."


def canned(request: httpx2.Request) -> httpx2.Response:
    if json.loads(request.content).get("stream"):
        events = [
            {"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant", "model": "local", "content": [], "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1}}},
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": ANSWER}},
            {"type": "content_block_stop", "index": 0},
            {"type": "message_stop"},
        ]
        sse = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)
        return httpx2.Response(200, content=sse.encode(), headers={"content-type": "text/event-stream"})
    return httpx2.Response(200, json={"id": "m", "type": "message", "role": "assistant", "model": "local", "content": [{"type": "text", "text": ANSWER}],
                                       "stop_reason": "end_turn", "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1}})


if os.environ.get("ANTHROPIC_API_KEY"):
    client = anthropic.Anthropic()
else:
    client = anthropic.Anthropic(api_key="offline", base_url="http://local", http_client=httpx2.Client(transport=httpx2.MockTransport(canned)))

create = trace_message(client.messages.create, sidecar="127.0.0.1:50051", workspace_id="acme")
messages = [{"role": "user", "content": "Context: " + CONTEXT[0] + "\n\nWho gave their name to Normandy?"}]
message = create(model="claude-sonnet-4-5", max_tokens=256, messages=messages, certus_context=CONTEXT)
print("answer:", message.content[0].text)
print("streamed events:", [e.type for e in create(model="claude-sonnet-4-5", max_tokens=256, messages=messages, certus_context=CONTEXT, stream=True)])
for fut in create.submitter.futures:
    ev = fut.result(timeout=30)
    print("evaluation:", ev.outcome, ev.evidence_id, {k: round(v, 3) for k, v in ev.metrics.items() if k in ("faithfulness", "answer_relevancy")})

"""Framework integrations of the light client, each behind an extra of ``certus-client``:

- :mod:`certus.client.integrations.langchain` (``certus-client[langchain]``): a callback handler
  that sends each retrieval-augmented answer (query, retrieved documents, answer) for evaluation;
- :mod:`certus.client.integrations.openai` (``certus-client[openai]``): ``trace_completion`` around
  the OpenAI SDK's chat completions (sync, async, streaming);
- :mod:`certus.client.integrations.anthropic` (``certus-client[anthropic]``): ``trace_message``
  around the Anthropic SDK's messages (sync, async, streaming).

All of them evaluate through :class:`certus.client.sync.SidecarClient.submit`: off the caller's
path, never raising into the application; results arrive through ``on_evaluation``.
"""

"""Forwarder: durable outbox (the evidence log + a cursor), sinks, breaker, reference receiver."""

from __future__ import annotations

from certus.sidecar.forwarder.forwarder import Forwarder
from certus.sidecar.forwarder.policy import CircuitBreaker, RetryPolicy
from certus.sidecar.forwarder.sinks import DeliveryError, FileSink, GrpcSink, HttpSink, make_sink
from certus.sidecar.forwarder.wire import Receipt

__all__ = [
    "CircuitBreaker",
    "DeliveryError",
    "FileSink",
    "Forwarder",
    "GrpcSink",
    "HttpSink",
    "Receipt",
    "RetryPolicy",
    "make_sink",
]

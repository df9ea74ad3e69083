"""Sink construction errors name the config field; server retry hints are parsed exactly."""

from __future__ import annotations

import email.utils
import time

import pytest
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from certus.sidecar.config import ForwarderConfig
from certus.sidecar.forwarder.policy import RetryPolicy
from certus.sidecar.forwarder.sinks import (
    FileSink,
    GrpcSink,
    HttpSink,
    _grpc_retry_after_s,
    _http_retry_after_s,
    make_sink,
)


def test_make_sink_by_name(tmp_path: object) -> None:
    p = RetryPolicy()
    assert isinstance(make_sink(ForwarderConfig(sink="file"), p), FileSink)
    assert isinstance(make_sink(ForwarderConfig(sink="grpc", url="127.0.0.1:9"), p), GrpcSink)
    assert isinstance(make_sink(ForwarderConfig(sink="http", url="http://127.0.0.1:9"), p), HttpSink)
    assert make_sink(ForwarderConfig(sink="none"), p) is None
    with pytest.raises(ValueError, match="forwarder.sink"):
        make_sink(ForwarderConfig(sink="kafka"), p)
    with pytest.raises(ValueError, match="forwarder.url"):
        make_sink(ForwarderConfig(sink="grpc", url=""), p)
    with pytest.raises(ValueError, match="forwarder.url"):
        make_sink(ForwarderConfig(sink="http", url="127.0.0.1:8081"), p)


def test_grpc_retry_hints() -> None:
    assert _grpc_retry_after_s((("retry-after", "2.5"),)) == 2.5
    assert _grpc_retry_after_s((("x", "y"), ("retry-after-ms", "1500"))) == 1.5
    st = status_pb2.Status(code=code_pb2.UNAVAILABLE, message="busy")
    info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=3, nanos=250_000_000))
    st.details.add().Pack(info)
    assert _grpc_retry_after_s((("grpc-status-details-bin", st.SerializeToString()),)) == 3.25
    assert _grpc_retry_after_s((("retry-after", "soon"),)) is None
    assert _grpc_retry_after_s((("grpc-status-details-bin", b"\xff\xff"),)) is None
    assert _grpc_retry_after_s(None) is None


def test_http_retry_after() -> None:
    assert _http_retry_after_s("7") == 7.0
    assert _http_retry_after_s(" 0.5 ") == 0.5
    assert _http_retry_after_s(None) is None
    assert _http_retry_after_s("tomorrow-ish") is None
    future = email.utils.formatdate(time.time() + 120, usegmt=True)
    assert 100 < (_http_retry_after_s(future) or 0) <= 120
    past = email.utils.formatdate(time.time() - 120, usegmt=True)
    assert _http_retry_after_s(past) == 0.0


def test_http_sink_path() -> None:
    p = RetryPolicy()
    assert HttpSink("http://h:8081", p)._path == "/v1/decisions"
    assert HttpSink("https://h/base/", p)._path == "/base/v1/decisions"
    assert HttpSink("http://h:1/v1/decisions", p)._path == "/v1/decisions"

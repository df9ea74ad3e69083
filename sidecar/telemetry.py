"""Telemetry set-up: the only module that configures providers/renderers, and only when asked.

Library modules call ``structlog.get_logger(__name__)``; ``configure_logging`` (called by the
``serve`` command) picks JSON (default) or text output and the level. Log events carry ids, hashes,
scores and locations only, never content.
"""

from __future__ import annotations

import logging
import sys

import structlog

from sidecar.config import TelemetryConfig


def configure_logging(cfg: TelemetryConfig) -> None:
    level = logging.getLevelName(cfg.log_level.upper())
    if not isinstance(level, int):
        raise ValueError(f"LOG_LEVEL: unknown level {cfg.log_level!r}")
    renderer: structlog.typing.Processor
    if cfg.log_format == "text":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    elif cfg.log_format == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        raise ValueError(f"LOG_FORMAT: must be json or text, got {cfg.log_format!r}")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )

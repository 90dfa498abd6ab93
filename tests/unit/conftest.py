"""Fixtures of the unit tier (no Ray)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agents.tracing import PinnedIds, use_provider


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """rayfleet's spans in this process, kept in memory (the SDK's exporter), for one test."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(id_generator=PinnedIds())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    use_provider(provider)
    try:
        yield exporter
    finally:
        use_provider(trace.NoOpTracerProvider())
        provider.shutdown()

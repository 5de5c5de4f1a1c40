"""Prometheus metrics: one registry per core (no process-wide default), served at /metrics."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Model latency spans a local 135M model (tens of ms) to a slow hosted one (a minute).
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536)


class Metrics:
    """Counters, histograms and gauges of one running bot."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter(
            "gptrelay_messages_received", "Messages accepted into the inbox", ["platform"], registry=r
        )
        self.handled = Counter(
            "gptrelay_messages_handled",
            "Messages finished, by outcome (answered, refused, limited, failed, undelivered)",
            ["platform", "outcome"],
            registry=r,
        )
        self.model_latency = Histogram(
            "gptrelay_model_latency_seconds",
            "Model time to the first token and to the whole answer",
            ["stage"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.tokens = Histogram(
            "gptrelay_tokens_per_answer",
            "Prompt and completion tokens of each answer",
            ["direction"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        # Every answer observes these four: their children are looked up once, not per answer.
        self.first_token_latency = self.model_latency.labels("first_token")
        self.total_latency = self.model_latency.labels("total")
        self.prompt_tokens = self.tokens.labels("prompt")
        self.completion_tokens = self.tokens.labels("completion")
        self.errors = Counter("gptrelay_errors", "Failures by kind", ["kind"], registry=r)
        self.queue_depth = Gauge(
            "gptrelay_queue_depth", "Messages accepted and waiting for their turn", registry=r
        )
        self.in_flight = Gauge(
            "gptrelay_conversations_in_flight", "Conversations with a message being answered", registry=r
        )

    def watch(self, queue_depth: Callable[[], float], in_flight: Callable[[], float]) -> None:
        """Read the gauges from the queue at scrape time, so the hot path pays nothing."""
        self.queue_depth.set_function(queue_depth)
        self.in_flight.set_function(in_flight)

    def render(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)

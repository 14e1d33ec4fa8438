"""The server's Prometheus metrics (prometheus_client), in a registry of its own so that two servers in one
process (the tests) do not share counters. `/metrics` renders it in Prometheus' text format."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "granite_gguf"
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

disable_created_metrics()  # no `_created` series beside each counter: half the scrape, nothing a dashboard reads


class Metrics:
    """Counters and histograms the server updates, and gauges read from the models at each scrape."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(f"{PREFIX}_requests", "HTTP requests answered, by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.errors = Counter(f"{PREFIX}_request_errors", "HTTP requests answered with a 4xx or 5xx status",
                              ["route", "status"], registry=self.registry)
        self.latency = Histogram(f"{PREFIX}_request_duration_seconds", "time from request to answer, by route",
                                 ["route"], buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.inputs = Counter(f"{PREFIX}_inputs_embedded", "inputs embedded, by model", ["model"],
                              registry=self.registry)
        self.tokens = Counter(f"{PREFIX}_tokens_embedded", "tokens embedded (after any cut), by model", ["model"],
                              registry=self.registry)
        self.batch_inputs = Histogram(f"{PREFIX}_batch_inputs", "inputs per shared llama.cpp call, by model",
                                      ["model"], buckets=BATCH_BUCKETS, registry=self.registry)

    def watch_models(self, read: Callable[[], Sequence[tuple[str, int, int]]]) -> None:
        """Gauges read at scrape time: per model (name, queued inputs, bytes of tensors loaded)."""
        self.registry.register(_ModelGauges(read))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ModelGauges(Collector):
    def __init__(self, read: Callable[[], Sequence[tuple[str, int, int]]]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        models = self.read()
        loaded = GaugeMetricFamily(f"{PREFIX}_models_loaded", "models this server serves")
        loaded.add_metric([], len(models))
        queue = GaugeMetricFamily(f"{PREFIX}_queue_inputs", "inputs waiting for a worker, by model", labels=["model"])
        memory = GaugeMetricFamily(f"{PREFIX}_model_bytes", "bytes of tensors llama.cpp loaded, by model",
                                   labels=["model"])
        for name, queued, size in models:
            queue.add_metric([name], queued)
            memory.add_metric([name], size)
        yield from (loaded, queue, memory)

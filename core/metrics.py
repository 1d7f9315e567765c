"""Prometheus metrics of a running bot: searches by input mix, latency, errors, encoder batches,
and how fresh its copy of the dataset is (rows held, seconds since it last reached the dataset).

One `Metrics` object per process, created at startup and passed in (no global registry): the
service records into it, the ops server (`bot/ops_server.py`) renders it at `/metrics`.
"""

from __future__ import annotations

from collections import Counter as CountOf
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from core.query import Term

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def modality_mix(terms: Iterable[Term]) -> str:
    """"text", "image+text", ...: the sorted set of a query's modalities, as a label."""
    return "+".join(sorted({t.modality for t in terms})) or "none"


class _BatchSizes(Collector):
    """Encoder forward passes by batch size, read from the worker's counter at scrape time."""

    def __init__(self, read: Callable[[], CountOf[int]]):
        self.read = read

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "search_all_encoder_batches", "Encoder forward passes by batch size", labels=["size"]
        )
        for size, count in sorted(self.read().items()):
            family.add_metric([str(size)], count)
        yield family


class _Dataset(Collector):
    """The rows a process holds, and the seconds since it last reached its dataset (opened or
    refreshed it): a replica cut off from S3 keeps answering from memory, and this says so."""

    def __init__(self, rows: Callable[[], int], age_s: Callable[[], float], failures: Callable[[], int]):
        self.rows, self.age_s, self.failures = rows, age_s, failures

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily("search_all_dataset_rows", "Rows of the dataset held in memory", value=self.rows())
        yield GaugeMetricFamily(
            "search_all_dataset_refresh_age_seconds",
            "Seconds since the dataset was last opened or refreshed successfully",
            value=self.age_s(),
        )
        yield CounterMetricFamily(
            "search_all_dataset_refresh_failures", "Refreshes of the dataset that failed", value=self.failures()
        )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.searches = Counter(
            "search_all_searches", "Searches by kind and input modalities", ["kind", "modalities"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "search_all_search_seconds", "Search latency by stage", ["stage"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.errors = Counter(
            "search_all_errors", "Failed searches by error type", ["error"], registry=self.registry
        )

    def watch_batches(self, read: Callable[[], CountOf[int]]) -> None:
        self.registry.register(_BatchSizes(read))

    def watch_dataset(self, rows: Callable[[], int], age_s: Callable[[], float], failures: Callable[[], int]) -> None:
        self.registry.register(_Dataset(rows, age_s, failures))

    def record(self, kind: str, modalities: str, timings_ms: dict[str, float]) -> None:
        self.searches.labels(kind, modalities).inc()
        for stage, ms in timings_ms.items():
            self.latency.labels(stage).observe(ms / 1000)

    def failed(self, error: BaseException) -> None:
        self.errors.labels(type(error).__name__).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

"""Prometheus metrics (`/metrics`), per process, with prometheus_client.

Counters and histograms are updated as frames are answered; gauges that
describe current state (loaded models, queue depth, cache bytes, connected
clients) are read from the registry and the cache when scraped, so they are
never stale. Each app has its own CollectorRegistry (several apps can live in
one test process). With several processes, scrape each one.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

_STAGES = ("decode", "queue", "inference", "total")
_STAGE_KEYS = tuple(f"{stage}_ms" for stage in _STAGES)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self.frames = Counter("webapp_frames_total", "Frames answered, by model and outcome (label or error code).",
                              ["model", "outcome"], registry=self.registry)
        self.errors = Counter("webapp_errors_total", "Frames answered with an error, by model and code.",
                              ["model", "code"], registry=self.registry)
        self.superseded = Counter("webapp_superseded_total", "Frames replaced by a newer frame before running.",
                                  ["model"], registry=self.registry)
        self.latency = Histogram("webapp_latency_seconds", "Time per stage of a frame.", ["model", "stage"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.downloads = Counter("webapp_downloads_total", "Model downloads from the store.", ["model"],
                                 registry=self.registry)
        self.download_seconds = Histogram("webapp_download_seconds", "Duration of model downloads.",
                                          buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120), registry=self.registry)
        self.connected = 0
        #: model -> (frames counter, latency histograms per stage). Bounded like the
        #: metrics' own label sets: models are named by `metric_label` (known or `unknown`).
        self._answered_children: dict[str, tuple] = {}

    def answered(self, model: str, timing: dict) -> None:
        # The labelled children are looked up once per model: `labels()` costs
        # a lock and a tuple key per call, five times per frame.
        children = self._answered_children.get(model)
        if children is None:
            children = (self.frames.labels(model, "label"),
                        tuple(self.latency.labels(model, stage) for stage in _STAGES))
            self._answered_children[model] = children
        children[0].inc()
        for child, key in zip(children[1], _STAGE_KEYS):
            child.observe(timing[key] / 1000.0)

    def failed(self, model: str, code: str, message: str = "") -> None:
        self.frames.labels(model, code).inc()
        if code == "superseded":
            self.superseded.labels(model).inc()
        else:
            self.errors.labels(model, code).inc()

    def downloaded(self, model: str, seconds: float) -> None:
        self.downloads.labels(model).inc()
        self.download_seconds.observe(seconds)

    def watch(self, registry, cache, memory=None) -> None:
        """Report the current state of `registry`, `cache` and memory on every scrape."""
        self.registry.register(_StateCollector(self, registry, cache, memory))


class _StateCollector:
    def __init__(self, metrics: Metrics, registry, cache, memory=None):
        self._metrics, self._registry, self._cache, self._memory = metrics, registry, cache, memory

    def describe(self):
        return []

    def collect(self):
        loaded = self._registry.loaded_models()
        yield GaugeMetricFamily("webapp_models_loaded", "Models loaded in memory.", value=len(loaded))
        memory = GaugeMetricFamily("webapp_model_memory_bytes", "Memory held by each loaded model.", labels=["model"])
        depth = GaugeMetricFamily("webapp_queue_depth", "Frames waiting for each model.", labels=["model"])
        for name, model in loaded.items():
            memory.add_metric([name], model.runtime.memory_bytes)
            depth.add_metric([name], model.batcher.depth)
        yield memory
        yield depth
        if self._cache is not None:
            yield GaugeMetricFamily("webapp_cache_bytes", "Bytes of models in the disk cache.",
                                    value=self._cache.total_bytes())
        yield GaugeMetricFamily("webapp_connected_clients", "Socket.IO clients connected to this process.",
                                value=self._metrics.connected)
        if self._memory is not None:
            yield GaugeMetricFamily("webapp_memory_limit_bytes", "The memory limit this process works within "
                                    "(container cgroup, MEMORY_LIMIT_MB or physical memory).",
                                    value=self._memory.limit_bytes)
            yield GaugeMetricFamily("webapp_rss_bytes", "Resident memory of this process.",
                                    value=self._memory.check())
            budgets = GaugeMetricFamily("webapp_memory_budget_bytes", "Memory budgets derived from the limit.",
                                        labels=["budget"])
            for name in ("model_memory_bytes", "decode_memory_bytes"):
                budgets.add_metric([name.removesuffix("_bytes")], self._memory.budgets[name])
            yield budgets

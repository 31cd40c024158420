"""Prometheus metrics in the text exposition format (version 0.0.4), without a client library.

``dalle2_requests_total{route,method,status}``, ``dalle2_errors_total{route,status,type}``,
``dalle2_request_duration_seconds{route}`` (histogram), ``dalle2_queue_depth{model}`` (waiting requests),
``dalle2_batch_images{model}`` and ``dalle2_batch_requests{model}`` (histograms: images and requests per model
call), ``dalle2_model_call_seconds{model}`` (histogram), ``dalle2_images_total{model,kind}`` and
``dalle2_batch_isolated_total{model}`` (merged calls that failed and were rerun one request at a time).
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

Labels = tuple[tuple[str, str], ...]

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    escaped = (v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for _, v in labels)
    return "{" + ",".join(f'{k}="{v}"' for (k, _), v in zip(labels, escaped, strict=True)) + "}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1


class Metrics:
    """Counters, gauges and histograms keyed by label tuples; safe to update from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[str, dict[Labels, float]] = defaultdict(dict)
        self.gauges: dict[str, dict[Labels, float]] = defaultdict(dict)
        self.histograms: dict[str, dict[Labels, Histogram]] = defaultdict(dict)
        self.help: dict[str, str] = {
            "dalle2_requests_total": "HTTP requests by route, method and status",
            "dalle2_errors_total": "Error responses (status >= 400) by route and status",
            "dalle2_request_duration_seconds": "Time from request to response, by route",
            "dalle2_queue_depth": "Requests waiting for a model call",
            "dalle2_batch_images": "Images made per model call",
            "dalle2_batch_requests": "Requests merged into one model call",
            "dalle2_model_call_seconds": "Duration of one model call",
            "dalle2_batch_isolated_total": "Merged model calls that failed and were rerun one request at a time",
            "dalle2_images_total": "Images made, by model and kind",
        }

    def inc(self, name: str, labels: Labels, amount: float = 1.0) -> None:
        with self._lock:
            self.counters[name][labels] = self.counters[name].get(labels, 0.0) + amount

    def set(self, name: str, labels: Labels, value: float) -> None:
        with self._lock:
            self.gauges[name][labels] = value

    def observe(self, name: str, labels: Labels, value: float, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        with self._lock:
            histogram = self.histograms[name].get(labels)
            if histogram is None:
                histogram = self.histograms[name][labels] = Histogram(buckets)
            histogram.observe(value)

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for name, series in sorted(self.counters.items()):
                lines += [f"# HELP {name} {self.help.get(name, name)}", f"# TYPE {name} counter"]
                lines += [f"{name}{_labels(k)} {_number(v)}" for k, v in sorted(series.items())]
            for name, series in sorted(self.gauges.items()):
                lines += [f"# HELP {name} {self.help.get(name, name)}", f"# TYPE {name} gauge"]
                lines += [f"{name}{_labels(k)} {_number(v)}" for k, v in sorted(series.items())]
            for name, series in sorted(self.histograms.items()):
                lines += [f"# HELP {name} {self.help.get(name, name)}", f"# TYPE {name} histogram"]
                for labels, h in sorted(series.items()):
                    cumulative = 0
                    for bound, count in zip((*h.buckets, float("inf")), h.counts, strict=True):
                        cumulative += count
                        le = "+Inf" if bound == float("inf") else _number(bound)
                        lines.append(f"{name}_bucket{_labels((*labels, ('le', le)))} {cumulative}")
                    lines.append(f"{name}_sum{_labels(labels)} {_number(h.total)}")
                    lines.append(f"{name}_count{_labels(labels)} {h.count}")
        return "\n".join(lines) + "\n"

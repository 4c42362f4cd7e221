"""Reading a service's /metrics from a benchmark: the same numbers Prometheus would scrape."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def metrics_text(port: int) -> str:
    """http://127.0.0.1:port/metrics, or "" while the endpoint is not up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            return response.read().decode()
    except OSError:
        return ""


def sample(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples called `name` (with these labels) in a metrics text."""
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items())
    )


def scrape(port: int, name: str) -> float:
    return sample(metrics_text(port), name)

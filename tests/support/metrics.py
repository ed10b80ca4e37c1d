"""Reading a service's ``/metrics``: a free port to serve them on, and their samples."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
"""Each sample's value by its name and its sorted labels."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 free now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> Samples:
    """The samples the service serving metrics on *port* of 127.0.0.1 exports now."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def tasks_labelled(samples: Samples) -> set[str]:
    """The task names any sample has as its ``task`` label."""
    return {value for _, labels in samples for key, value in labels if key == "task"}


def probe(port: int, path: str) -> tuple[int, str]:
    """GET *path* of the metrics server on *port* of 127.0.0.1: the status code and the body."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()

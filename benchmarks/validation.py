"""Cost of validating one typical task message: compiled validator vs. jsonschema.

Run with ``hatch run bench-validation``. Each figure is the median over several runs of the
mean time per call; the ratio is measured in the same run, so it holds on a noisy machine.
"""

from __future__ import annotations

import argparse
import statistics
import timeit
from collections.abc import Callable

import jsonschema

from dispatcher.schema import load_schema, validator

TYPICAL_TASK = {
    "task": "myapp.tasks.send_email",
    "uuid": "4f0d7c5e-8d0a-4a7e-9d53-1e1bd1c3b0f2",
    "args": [42, "welcome"],
    "kwargs": {"to": "someone@example.com", "retry": True},
    "time_pub": 1764360000.25,
    "timeout": 30,
    "on_duplicate": "serial",
}


def median_microseconds(call: Callable[[], object], number: int, runs: int) -> float:
    """Median over *runs* of the mean cost of *call*, in microseconds."""
    timings = timeit.repeat(call, number=number, repeat=runs)
    return statistics.median(timings) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--number", type=int, default=20_000)
    options = parser.parse_args()

    compiled = validator("task-message")
    reference = jsonschema.Draft202012Validator(load_schema("task-message"))
    if not (compiled.is_valid(TYPICAL_TASK) and reference.is_valid(TYPICAL_TASK)):
        raise SystemExit("the typical task message does not validate; fix the benchmark")

    runs, number = options.runs, options.number
    fast = median_microseconds(lambda: compiled.is_valid(TYPICAL_TASK), number, runs)
    slow = median_microseconds(lambda: reference.is_valid(TYPICAL_TASK), max(1, number // 20), runs)
    print(f"typical task message, median of {runs} runs")
    print(f"  dispatcher.schema validator : {fast:8.2f} us per message")
    print(f"  jsonschema (reference)      : {slow:8.2f} us per message")
    print(f"  speed-up                    : {slow / fast:8.1f}x")


if __name__ == "__main__":
    main()

"""The mixed soak's books: what was published, what the tasks recorded, and the difference.

Every submission is entered with its kind and how many runs it must make (``runs``: starts,
for the tasks that record a start and an end) and whether it may end (``ends``). At the
end, the lines the tasks appended to ``runs.log`` (see ``soak_tasks``) are counted by uuid
and compared. pg_notify is at most once: a task published while the service's listening
connection is being replaced (the soak terminates it now and then) is lost, by design; such
losses are listed with how long after a termination they were published.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import threading
from collections import Counter, defaultdict
from pathlib import Path


@dataclasses.dataclass
class Entry:
    """One submission: its kind, when it was sent, and what its runs must be."""

    kind: str
    sent: float
    runs: int
    ends: int | None = None  # None: as many as runs
    key: str | None = None  # jobs that must never overlap share a key (serial twins)
    at_most_once: bool = False  # pg_notify: may be lost while its listener reconnects


class Ledger:
    """The submissions of the soak, by uuid (safe to enter from several threads)."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.terminations: list[float] = []
        self.reloads: list[float] = []
        self._lock = threading.Lock()

    def add(self, uuid: str, entry: Entry) -> None:
        with self._lock:
            self.entries[uuid] = entry

    def expect(self, uuid: str, runs: int, ends: int | None = None) -> None:
        """Change what *uuid* must do (an on_duplicate job not stored runs 0 times)."""
        with self._lock:
            self.entries[uuid].runs = runs
            self.entries[uuid].ends = ends

    def save(self, path: Path) -> None:
        """Write every entry, a JSON object a line, for a look after the soak."""
        with path.open("w") as out:
            for uuid, entry in self.entries.items():
                out.write(json.dumps({"uuid": uuid, **dataclasses.asdict(entry)}) + "\n")


@dataclasses.dataclass
class Runs:
    """What the tasks recorded of one uuid."""

    starts: list[float] = dataclasses.field(default_factory=list)
    ends: list[float] = dataclasses.field(default_factory=list)


def read_runs(path: Path) -> tuple[dict[str, Runs], dict[str, list[float]]]:
    """The runs by uuid, and the times of the scheduled tasks' runs by kind."""
    runs: dict[str, Runs] = defaultdict(Runs)
    scheduled: dict[str, list[float]] = defaultdict(list)
    if not path.exists():
        return runs, scheduled
    for line in path.read_text().splitlines():
        event, kind, uuid, when, _pid = line.split()
        if kind.startswith("scheduled"):
            scheduled[kind].append(float(when))
            continue
        record = runs[uuid]
        if event in ("run", "start"):
            record.starts.append(float(when))
        if event in ("run", "end"):
            record.ends.append(float(when))
    return runs, scheduled


def overlaps(runs: dict[str, Runs], ledger: Ledger) -> list[str]:
    """Keys whose jobs ran at the same time (serial twins must not)."""
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for uuid, entry in ledger.entries.items():
        if entry.key is None or uuid not in runs:
            continue
        for start, end in zip(runs[uuid].starts, runs[uuid].ends, strict=False):
            spans[entry.key].append((start, end))
    found = []
    for key, key_spans in spans.items():
        key_spans.sort()
        for (_, end), (start, _) in itertools.pairwise(key_spans):
            if start < end - 0.001:
                found.append(key)
                break
    return found


def account(ledger: Ledger, records: Path, ticks: dict[str, int]) -> int:
    """Print the accounting of every submission; return the number of problems.

    *ticks*: the ticks of the durable scheduled tasks stored, by kind.
    """
    runs, scheduled = read_runs(records)
    problems = 0
    per_kind: dict[str, Counter[str]] = defaultdict(Counter)
    notify_losses: list[float] = []
    for uuid, entry in ledger.entries.items():
        got = runs.get(uuid, Runs())
        ends = entry.runs if entry.ends is None else entry.ends
        tally = per_kind[entry.kind]
        tally["published"] += 1
        tally["expected runs"] += entry.runs
        tally["runs"] += len(got.starts)
        if len(got.starts) == entry.runs and len(got.ends) == ends:
            tally["as expected"] += 1
        elif entry.at_most_once and not got.starts:
            tally["lost (at most once)"] += 1
            notify_losses.append(entry.sent)
        else:
            tally["WRONG"] += 1
            problems += 1
            if tally["WRONG"] <= 5:
                print(
                    f"  WRONG {entry.kind} {uuid}: {len(got.starts)} starts and {len(got.ends)}"
                    f" ends, expected {entry.runs} and {ends}"
                )
    unknown = set(runs) - set(ledger.entries)
    if unknown:
        problems += len(unknown)
        print(f"  {len(unknown)} uuids ran that were never published: {sorted(unknown)[:5]}")
    print("accounting, by kind:")
    for kind in sorted(per_kind):
        print(f"  {kind:10} " + ", ".join(f"{k} {v:,}" for k, v in per_kind[kind].items()))
    for key in overlaps(runs, ledger):
        problems += 1
        print(f"  WRONG: serial twins of key {key} overlapped")
    explain_losses(notify_losses, ledger.terminations + ledger.reloads)
    for kind, times in sorted(scheduled.items()):
        span = max(times) - min(times)
        seconds = {round(when) for when in times}
        print(
            f"  {kind}: {len(times)} runs over {span:.0f} s,"
            f" {len(times) - len(seconds)} seconds with two runs (one started late, or a tick"
            " run twice)"
        )
        if kind in ticks and ticks[kind] != len(times):
            problems += 1
            print(f"  WRONG: {kind} ran {len(times)} times for {ticks[kind]} ticks stored")
    return problems


def near(when: float, events: list[float]) -> bool:
    """Whether *when* is within 2 s before to 10 s after one of *events*."""
    return any(-2 <= when - event < 10 for event in events)


def explain_losses(losses: list[float], events: list[float]) -> None:
    """Say how long after a termination (or reload) each lost pg_notify task was sent."""
    if not losses:
        return
    far = [sent for sent in losses if not near(sent, events)]
    print(
        f"  {len(losses)} pg_notify tasks lost; {len(losses) - len(far)} of them sent within"
        f" 2 s before to 10 s after a termination of the service's connections, {len(far)} otherwise"
    )

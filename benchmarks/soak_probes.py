"""What the mixed soak samples of a running service, from outside.

From /proc: the main process's RSS and USS (``smaps_rollup``), open file descriptors and
threads, and the RSS of each descendant (fork servers, workers). From PostgreSQL: the
service's connections (``pg_stat_activity``, by the node id in their ``application_name``),
the rows of the durable tables by state, and the size of the jobs table. From the service:
every number of its ``status`` reply, flattened to dotted keys, and the size of its
``/metrics`` page.
"""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
from live_service import descendants, parent_pid, rss_bytes


def smaps_rollup(pid: int) -> dict[str, int]:
    """``Rss``, ``Pss`` and ``Uss`` (private clean + dirty) of *pid*, in bytes."""
    fields: dict[str, int] = {}
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return {}
    for line in lines[1:]:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[name] = int(parts[0]) * 1024
    return {
        "rss": fields.get("Rss", 0),
        "pss": fields.get("Pss", 0),
        "uss": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
    }


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def fd_kinds(pid: int) -> dict[str, int]:
    """Open fds of *pid* by kind (``socket``, ``pipe``, ``anon_inode:[pidfd]``, a file...)."""
    kinds: dict[str, int] = {}
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return kinds
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        kind = target.split(":[")[0] if ":[" in target else "file"
        if target.startswith("anon_inode:"):
            kind = target
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def threads(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def flatten(value: Any, prefix: str = "") -> dict[str, float]:
    """Every number in *value* (a JSON reply) by its dotted path; list lengths as ``len``."""
    found: dict[str, float] = {}
    if isinstance(value, bool):
        return found
    if isinstance(value, int | float):
        found[prefix] = value
    elif isinstance(value, dict):
        found[f"{prefix}.len" if prefix else "len"] = len(value)
        for key, item in value.items():
            found.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(value, list):
        found[f"{prefix}.len"] = len(value)
    return found


STATUS_SKIP = ("running.", "workers.worker-", "aio_tasks.", "recent_failures.", "main.pool.usage")
"""Parts of ``status`` that name tasks, workers or asyncio tasks one by one: only their
count is kept (``running.len``, ``aio_tasks.len``...), not each value."""


def status_numbers(status: dict[str, Any]) -> dict[str, float]:
    """The numbers of a ``status`` reply worth following over a long run."""
    numbers = flatten(status)
    return {
        key: value
        for key, value in numbers.items()
        if not key.startswith(STATUS_SKIP) or (key.count(".") == 1 and key.endswith(".len"))
    }


def database_numbers(dsn: str, node_id: str, schema: str) -> dict[str, float]:
    """The service's connections, the durable rows by state, the jobs table's size and dead
    rows (which only vacuum reclaims: with autovacuum off, the size grows whatever the
    purge does)."""
    numbers: dict[str, float] = {}
    with psycopg.connect(dsn, autocommit=True, application_name="soak-probe") as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s",
            (f"%{node_id}%",),
        ).fetchone()
        numbers["pg.connections"] = row[0] if row else -1
        for state, count in conn.execute(
            f"SELECT state, count(*) FROM {schema}.jobs GROUP BY state"
        ):
            numbers[f"pg.jobs.{state}"] = count
        row = conn.execute(f"SELECT count(*) FROM {schema}.schedule_ticks").fetchone()
        numbers["pg.schedule_ticks"] = row[0] if row else -1
        row = conn.execute(f"SELECT pg_total_relation_size('{schema}.jobs')").fetchone()
        numbers["pg.jobs_bytes"] = row[0] if row else -1
        row = conn.execute(
            "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = %s::regclass",
            (f"{schema}.jobs",),
        ).fetchone()
        numbers["pg.jobs_dead"] = row[0] if row else -1
    return numbers


def process_numbers(pid: int) -> dict[str, float]:
    """/proc numbers of the main process and of its descendants."""
    numbers: dict[str, float] = {f"main.{k}": v for k, v in smaps_rollup(pid).items()}
    numbers["main.fds"] = open_fds(pid)
    numbers["main.threads"] = threads(pid)
    for kind, count in fd_kinds(pid).items():
        numbers[f"main.fd.{kind}"] = count
    children = descendants(pid)
    fork_servers = [child for child in children if parent_pid(child) == pid]
    workers = [child for child in children if child not in fork_servers]
    numbers["fork_servers"] = len(fork_servers)
    numbers["fork_servers.rss"] = sum(rss_bytes(p) or 0 for p in fork_servers)
    numbers["fork_servers.fds"] = sum(max(open_fds(p), 0) for p in fork_servers)
    numbers["workers"] = len(workers)
    numbers["workers.rss"] = sum(rss_bytes(p) or 0 for p in workers)
    return numbers


def metrics_numbers(url: str | None) -> dict[str, float]:
    """Lines and bytes of the ``/metrics`` page."""
    if url is None:
        return {}
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read()
    except OSError:
        return {"metrics.failed": 1}
    return {"metrics.bytes": len(body), "metrics.lines": body.count(b"\n")}

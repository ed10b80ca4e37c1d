"""Hostile input against a live service: it must survive, keep working and stay small.

Run with ``hatch run fuzz [--count N] [--dsn DSN] [--seed S]``. It starts
``dispatcher-standalone`` on the local PostgreSQL (or ``--dsn``), then sends ``--count``
hostile messages (default 100,000), about half over pg_notify and half over the service's
unix socket: random bytes, truncated and mutated messages, deep nesting, huge numbers in
numeric fields, bad chunk envelopes, control messages with odd data, uuids and names that
would forge log lines, unknown tasks. Registered tasks sent with hostile options write to a
decoy file. After every 999 hostile messages comes a valid canary task that appends a byte to
a file, alternately over each path, so the canaries that ran can be counted.

At the end it reports whether the service is alive and still answers ``alive`` (over the
socket and over pg_notify), canaries run and sent, internal errors and rejections by reason
(from ``status``), workers lost, the main process's resident memory before and after, and
what it wrote to its log. The exit status is 1 if any check fails; the service's folder and
log are then kept, and their path printed.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from live_service import DEFAULT_DSN, LiveService, mib, peak_rss_bytes, rss_bytes

from dispatcher.schema import CHUNK_KEY, MAX_MESSAGE_BYTES, MAX_NOTIFY_PAYLOAD_BYTES

UNREGISTERED = "fuzz_tasks.nothing"
FORGED = "FUZZFORGED"
"""Marker of text that would start a log line of its own if newlines went through raw."""
NOTIFY_BATCH = "SELECT count(pg_notify(%s, p)) FROM unnest(%s::text[]) AS p"
DEEP = 2000
LINE_BREAKS = re.compile("[\n\r\u2028\u2029\x85]")

Payload = str | bytes
"""A message: text (JSON or not), or raw bytes (socket only)."""


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class Hostile:
    """Makes hostile messages, each with the name of its kind."""

    def __init__(self, rng: random.Random, decoy: Path, service_channel: str) -> None:
        self.rng = rng
        self.decoy = str(decoy)
        self.service_channel = service_channel
        self.kinds: list[tuple[str, Callable[[], Payload], int]] = [
            ("random_bytes", self.random_bytes, 10),
            ("random_text", self.random_text, 5),
            ("truncated", self.truncated, 10),
            ("mutated", self.mutated, 12),
            ("deep", self.deep, 4),
            ("numbers", self.numbers, 10),
            ("chunks", self.chunks, 12),
            ("control", self.control, 10),
            ("uuids", self.uuids, 8),
            ("unknown_task", self.unknown_task, 7),
            ("not_object", self.not_object, 3),
            ("shapes", self.shapes, 8),
            ("big", self.big, 1),
        ]
        self._names = [kind[0] for kind in self.kinds]
        self._makers = [kind[1] for kind in self.kinds]
        self._weights = [kind[2] for kind in self.kinds]

    def make(self) -> tuple[str, Payload]:
        index = self.rng.choices(range(len(self._makers)), self._weights)[0]
        return self._names[index], self._makers[index]()

    # -- building blocks -------------------------------------------------------------------

    def _hex(self, size: int = 16) -> str:
        return f"{self.rng.getrandbits(size * 4):0{size}x}"

    def _unregistered(self) -> dict[str, Any]:
        rng = self.rng
        message: dict[str, Any] = {"task": UNREGISTERED, "uuid": self._hex()}
        if rng.random() < 0.7:
            message["args"] = [rng.randint(-5, 5), "a", None, [1, {"b": 2.5}]][: rng.randint(0, 4)]
        if rng.random() < 0.5:
            message["kwargs"] = {"k": rng.random(), "s": "\u00e9\u2603"}
        for key, value in (("timeout", 5), ("delay", 0.5), ("time_pub", 1727354869.51)):
            if rng.random() < 0.3:
                message[key] = value
        if rng.random() < 0.2:
            message["on_duplicate"] = rng.choice(["serial", "discard", "queue_one", "parallel"])
        return message

    def _valid_base(self) -> str:
        """Valid JSON that can never run a task (mutating it must not run one either)."""
        rng = self.rng
        choice = rng.random()
        if choice < 0.6:
            return dumps(self._unregistered())
        if choice < 0.8:
            text = dumps(self._unregistered())
            total = rng.randint(1, 3)
            size = -(-len(text) // total)
            index = rng.randrange(total)
            return dumps(
                {
                    CHUNK_KEY: "v1",
                    "message_id": self._hex(),
                    "index": index,
                    "total": total,
                    "payload": text[index * size : (index + 1) * size],
                }
            )
        command = rng.choice(["alive", "running", "workers", "chunks"])
        data = {"task": UNREGISTERED} if command == "running" else {}
        return dumps({"control": command, "control_data": data})

    def _decoy(self, **fields: Any) -> dict[str, Any]:
        """A registered task that may run, writing to the decoy file (never the canaries')."""
        return {"task": "bench_tasks.tick", "args": [self.decoy], **fields}

    def _odd_text(self) -> str:
        return self.rng.choice(
            [
                "",
                "\n",
                "\r\n",
                "\u0000",
                "\u2028",
                "\u2029",
                "\u0085",
                "\x1b[2J",
                "\ud800",
                "\udfff",
                "\ufeff",
                "x" * 10_000,
                f"a\n{FORGED} CRITICAL dispatcher.service: forged line",
                f"a\r{FORGED} CRITICAL carriage return",
                f"a\u2028{FORGED} CRITICAL line separator",
            ]
        )

    # -- the kinds -------------------------------------------------------------------------

    def random_bytes(self) -> Payload:
        return self.rng.randbytes(self.rng.randint(0, 300))

    def random_text(self) -> Payload:
        rng = self.rng
        alphabet = [chr(rng.randint(0, 0x2FFF)) for _ in range(64)] + list('{}[]",:\\0e-')
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 200)))

    def truncated(self) -> Payload:
        text = self._valid_base()
        return text[: self.rng.randrange(len(text))]

    def mutated(self) -> Payload:
        rng = self.rng
        data = bytearray(self._valid_base().encode())
        specials = b'{}[]",:\\0123456789e-.tfn \x00\n'
        for _ in range(rng.randint(1, 5)):
            position = rng.randrange(len(data))
            operation = rng.randrange(5)
            if operation == 0:
                data[position] = rng.randrange(256)
            elif operation == 1:
                data.insert(position, rng.choice(specials))
            elif operation == 2 and len(data) > 1:
                del data[position]
            elif operation == 3:
                data[position:position] = data[position : position + rng.randint(1, 20)]
            else:
                data[position] = rng.choice(specials)
        raw = bytes(data)
        if rng.random() < 0.5:
            return raw
        return raw.decode("utf-8", "replace")

    def deep(self) -> Payload:
        rng = self.rng
        depth = DEEP if rng.random() < 0.95 else 100_000
        opened, closed = "[" * depth, "]" * depth
        return rng.choice(
            [
                opened,
                opened + closed,
                '{"a":' * depth + "1" + "}" * depth,
                dumps({"task": UNREGISTERED, "args": []})[:-3] + opened + closed + "]}",
                f'{{"task":"bench_tasks.tick","args":["{self.decoy}"],"kwargs":{{"k":{opened}{closed}}}}}',
                '{"control":"running","reply_to":"x","control_data":' + opened + closed + "}",
                '{"task":"' + UNREGISTERED + '","uuid":' + opened + closed + "}",
            ]
        )

    def numbers(self) -> Payload:
        rng = self.rng
        huge = "9" * 400
        field = rng.choice(["time_pub", "timeout", "delay"])
        value = rng.choice(
            [
                huge,
                "-" + huge,
                "1" + "0" * 5000,
                "1e400",
                "-1e400",
                "1e308",
                "1.7976931348623157e308",
                "5e-324",
                "1e-320",
                "-0.0",
                "0.0",
                "1" + "0" * 20,
                "1e99999",
                "NaN",
                "Infinity",
            ]
        )
        base = self._decoy() if rng.random() < 0.6 else {"task": UNREGISTERED}
        text = dumps({**base, "uuid": self._hex()})
        choice = rng.random()
        if choice < 0.7:
            return text[:-1] + f',"{field}":{value}}}'
        if choice < 0.85:
            return text[:-1] + f',"args":["{self.decoy}",{value}]}}'
        return dumps({"task": UNREGISTERED})[:-1] + f',"kwargs":{{"n":{value}}}}}'

    def chunks(self) -> Payload:
        rng = self.rng
        message_id = self._hex()
        inner = dumps(self._unregistered())

        def envelope(**fields: Any) -> str:
            base: dict[str, Any] = {
                CHUNK_KEY: "v1",
                "message_id": message_id,
                "index": 0,
                "total": 1,
                "payload": inner,
            }
            return dumps({**base, **fields})

        choice = rng.randrange(18)
        if choice == 0:
            return envelope(total=1.0)
        if choice == 1:
            return envelope(index=0.0, total=2.0, payload=inner[:5])
        if choice == 2:
            total = rng.randint(1, 5)
            return envelope(index=total + rng.randint(0, 2), total=total)
        if choice == 3:  # two envelopes of one message that disagree about the total
            first = envelope(index=0, total=2, payload=inner[:10])
            return first + "\n" + envelope(index=1, total=3, payload=inner[10:])
        if choice == 4:  # a big first slice of a message that never completes
            return envelope(index=0, total=2, payload="x" * 20_000)
        if choice == 5:
            return envelope(index=-1)
        if choice == 6:
            return envelope(total=0)
        if choice == 7:
            return envelope(index=rng.choice([10**400, 10**20, 9999]), total=10_000)
        if choice == 8:
            return envelope(total=rng.choice([10**400, 10_001, 2**63]))
        if choice == 9:
            return envelope(message_id=self._odd_text() if rng.random() < 0.8 else 5)
        if choice == 10:
            return envelope(payload=rng.choice([5, None, [inner], {"a": inner}]))
        if choice == 11:
            return envelope(extra=1)
        if choice == 12:  # a chunk envelope inside a chunk envelope
            return envelope(payload=envelope(message_id=self._hex()))
        if choice == 13:
            return envelope(payload="[" * DEEP)
        if choice == 14:  # a whole message in one chunk: a registered task, huge numbers
            return envelope(payload=dumps(self._decoy())[:-1] + f',"time_pub":{"9" * 400}}}')
        if choice == 15:  # one index twice
            return envelope(index=1, total=3, payload="a") + "\n" + envelope(index=1, total=3)
        if choice == 16:
            return envelope(**{CHUNK_KEY: rng.choice(["v2", 1, None, ""])})
        parts = [inner[: len(inner) // 2], inner[len(inner) // 2 :]]  # valid, out of order
        return "\n".join(envelope(index=i, total=2, payload=parts[i]) for i in (1, 0))

    def control(self) -> Payload:
        rng = self.rng
        command: Any = rng.choice(
            [
                "alive",
                "running",
                "cancel",
                "workers",
                "status",
                "main",
                "aio_tasks",
                "producers",
                "chunks",
                "set_log_level",
                "metrics",
                "run",
                "nope",
                "",
                "ALIVE",
                5,
                None,
                [],
                {},
                "x" * 10_000,
                f"a\n{FORGED} forged",
            ]
        )
        data: Any = rng.choice(
            [
                None,
                [],
                "data",
                5,
                10**400,
                {"uuid": 5},
                {"uuid": self._odd_text()},
                {"task": {}},
                {"task": UNREGISTERED},
                {"uuid": "u", "task": UNREGISTERED, "extra": 1},
                {"all": False},
                {"all": "yes"},
                {"level": "TRACE"},
                {"level": 5},
                {"level": ["DEBUG"]},
                self._unregistered(),
                self._decoy(delay=10**400),
            ]
        )
        message: dict[str, Any] = {"control": command}
        if rng.random() < 0.8:
            message["control_data"] = data
        if rng.random() < 0.7:
            message["reply_to"] = rng.choice(
                [
                    None,
                    "",
                    "a b",
                    "x" * 64,
                    "x" * 10_000,
                    "\n",
                    "\u0000",
                    5,
                    [],
                    f"fuzz_{self._hex(8)}",
                    self.service_channel,
                ]
            )
        return dumps(message)

    def uuids(self) -> Payload:
        rng = self.rng
        odd: Any = self._odd_text() if rng.random() < 0.85 else rng.choice([5, [], {}, None])
        base = self._decoy() if rng.random() < 0.3 else self._unregistered()
        fields: dict[str, Any] = {"uuid": odd}
        if rng.random() < 0.3:
            fields["guid"] = self._odd_text()
        if rng.random() < 0.2:
            fields["on_duplicate"] = "serial"
        return dumps({**base, **fields})

    def unknown_task(self) -> Payload:
        rng = self.rng
        name = rng.choice(
            [
                "os.system",
                "builtins.eval",
                "__import__",
                "bench_tasks",
                "bench_tasks.",
                "bench_tasks.tick ",
                "BENCH_TASKS.TICK",
                "bench_tasks.tick\u0000",
                "bench_tasks.tick\n",
                "bench_tasks.__dict__",
                "subprocess.run",
                "",
                ".",
                "a" * 10_000,
                self._odd_text(),
                f"fuzz_tasks.{self._hex(8)}",
            ]
        )
        return dumps({"task": name, "uuid": self._hex(), "args": ["rm -rf /"]})

    def not_object(self) -> Payload:
        return self.rng.choice(
            ["1", "null", '"task"', "[]", "true", "1e999", "NaN", "-Infinity", "", " ", "{}"]
        )

    def shapes(self) -> Payload:
        rng = self.rng
        variants: list[dict[str, Any] | str] = [
            self._decoy(args={"path": self.decoy}),
            self._decoy(kwargs=[self.decoy]),
            {"task": ["bench_tasks.tick"]},
            {"task": None},
            {"task": 5},
            self._decoy(timeout="5"),
            self._decoy(on_duplicate="sometimes"),
            self._decoy(bind="yes"),
            self._decoy(delay=-1),
            self._decoy(timeout=-0.5),
            self._decoy(delay=10**9),
            self._decoy(guid=[1, 2]),
            self._decoy(uuid=self._hex(), on_duplicate="serial", args=[self.decoy, "\ud800"]),
            {"task": UNREGISTERED, "x" * 5000: 1},
            {"args": [], "kwargs": {}},
            f'{{"task":"bench_tasks.tick","task":"{UNREGISTERED}","args":["{self.decoy}"]}}',
            '{"task":"' + UNREGISTERED + '","args":["\\ud800\\udfff\\u0000"]}',
            '{"task":"' + UNREGISTERED + '",}',
            "{'task': 'single quotes'}",
        ]
        chosen = rng.choice(variants)
        return chosen if isinstance(chosen, str) else dumps(chosen)

    def big(self) -> Payload:
        rng = self.rng
        choice = rng.randrange(4)
        if choice == 0:  # just under the NOTIFY limit
            return dumps({"task": UNREGISTERED, "args": ["y" * (MAX_NOTIFY_PAYLOAD_BYTES - 60)]})
        if choice == 1:
            return dumps({"task": UNREGISTERED, "args": ["z" * 500_000]})
        if choice == 2:
            return dumps(self._decoy(kwargs={"k": "w" * 200_000}))
        return "{" * 100_000


class SocketSender:
    """Writes lines to the service's socket; a thread reads (and counts) what comes back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.replies = 0
        self.reconnects = 0
        self._sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(60)
        sock.connect(str(self.path))
        threading.Thread(target=self._drain, args=(sock,), daemon=True).start()
        return sock

    def _drain(self, sock: socket.socket) -> None:
        try:
            while data := sock.recv(1 << 16):
                self.replies += data.count(b"\n")
        except OSError:
            return

    def send(self, lines: list[bytes]) -> None:
        if not lines:
            return
        data = b"\n".join(lines) + b"\n"
        for attempt in range(2):
            if self._sock is None:
                self._sock = self._connect()
            try:
                self._sock.sendall(data)
                return
            except OSError:
                self._sock.close()
                self._sock = None
                self.reconnects += 1
                if attempt:
                    raise

    def send_alone(self, line: bytes) -> None:
        """Send one line on a connection of its own (the service may close it)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(60)
            sock.connect(str(self.path))
            try:
                sock.sendall(line + b"\n")
            except OSError:
                self.reconnects += 1

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()


def notifiable(payload: Payload) -> str | None:
    """The payload as NOTIFY text, or None when NOTIFY cannot carry it (socket only)."""
    if isinstance(payload, bytes) or "\x00" in payload:
        return None
    try:
        size = len(payload.encode())
    except UnicodeEncodeError:  # lone surrogates: not UTF-8
        return None
    return payload if size <= MAX_NOTIFY_PAYLOAD_BYTES else None


def as_line(payload: Payload) -> bytes:
    return payload if isinstance(payload, bytes) else payload.encode("utf-8", "surrogatepass")


def alive_over_pg_notify(dsn: str, channel: str, timeout: float = 10) -> bool:
    """Send ``alive`` over NOTIFY and wait for the reply on a channel of our own."""
    reply_to = f"fuzz_reply_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'LISTEN "{reply_to}"')
        conn.execute(
            "SELECT pg_notify(%s, %s)", (channel, dumps({"control": "alive", "reply_to": reply_to}))
        )
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            for notify in conn.notifies(timeout=remaining, stop_after=1):
                if "node_id" in notify.payload:
                    return True
    return False


class Fuzz:
    """One run: the service, the senders, the counts."""

    def __init__(self, service: LiveService, options: argparse.Namespace) -> None:
        self.service = service
        self.options = options
        self.canary_path = service.folder / "canaries"
        self.decoy_path = service.folder / "decoy"
        self.canary_path.touch()
        self.hostile = Hostile(random.Random(options.seed), self.decoy_path, service.channel)
        self.canary = dumps({"task": "bench_tasks.tick", "args": [str(self.canary_path)]})
        self.sent_by_kind: Counter[str] = Counter()
        self.sent_by_path: Counter[str] = Counter()
        self.canaries_sent = 0
        self.socket = SocketSender(service.socket_path)
        self.stalled = ""

    def canaries_run(self) -> int:
        return self.canary_path.stat().st_size

    def run(self, conn: psycopg.Connection[Any]) -> None:
        options = self.options
        every = options.canary_every
        sent = 0
        round_number = 0
        # One line over the socket's limit: the service closes that connection.
        self.socket.send_alone(b"[" * (MAX_MESSAGE_BYTES + 1))
        self.sent_by_kind["oversized_line"] += 1
        self.sent_by_path["socket (alone)"] += 1
        next_report = 10_000
        while sent < options.count:
            notify: list[str] = []
            lines: list[bytes] = []
            for _ in range(min(every - 1, options.count - sent)):
                kind, payload = self.hostile.make()
                self.sent_by_kind[kind] += 1
                text = notifiable(payload)
                if text is not None and self.hostile.rng.random() < 0.5:
                    notify.append(text)
                elif len(as_line(payload)) > MAX_MESSAGE_BYTES // 2:
                    self.socket.send_alone(as_line(payload))
                    self.sent_by_path["socket (alone)"] += 1
                else:
                    lines.append(as_line(payload))
                sent += 1
            if round_number % 2 == 0:
                notify.append(self.canary)
            else:
                lines.append(self.canary.encode())
            self.canaries_sent += 1
            self.sent_by_path["pg_notify"] += len(notify)
            self.sent_by_path["socket"] += len(lines)
            conn.execute(NOTIFY_BATCH, (self.service.channel, notify))
            self.socket.send(lines)
            round_number += 1
            if not self._keep_pace(sent):
                return
            if sent >= next_report:
                print(f"  {sent:7,d} sent, {self.canaries_run()} canaries run", flush=True)
                next_report += 10_000
        for canary_path in ("pg_notify", "socket"):  # a last canary on each path
            if canary_path == "pg_notify":
                conn.execute(NOTIFY_BATCH, (self.service.channel, [self.canary]))
            else:
                self.socket.send([self.canary.encode()])
            self.canaries_sent += 1

    def _keep_pace(self, sent: int) -> bool:
        """Wait while more than a few rounds are unprocessed; False if the service is stuck."""
        behind = self.options.window
        deadline = time.monotonic() + 60
        while self.canaries_run() < self.canaries_sent - behind:
            if not self.service.running():
                self.stalled = f"the service exited after {sent} messages"
                return False
            if time.monotonic() > deadline:
                self.stalled = f"no canary ran for 60 s after {sent} messages"
                return False
            time.sleep(0.01)
        return True


def forged_lines(log: str) -> int:
    """Lines of the log (by any line break a viewer may honour) that a message started."""
    return sum(line.startswith(FORGED) for line in LINE_BREAKS.split(log))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    parser.add_argument("--count", type=int, default=100_000, help="hostile messages to send")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--canary-every", type=int, default=1000)
    parser.add_argument("--window", type=int, default=5, help="canaries allowed in flight")
    parser.add_argument("--max-rss-growth", type=float, default=32, help="MiB (a check)")
    parser.add_argument("--max-log-bytes", type=int, default=4 << 20, help="(a check)")
    options = parser.parse_args()
    if options.seed is None:
        options.seed = random.randrange(2**32)
    folder = Path(tempfile.mkdtemp(prefix="dispatcher-fuzz-"))
    service = LiveService(folder, options.dsn, options.workers)
    print(f"fuzz: {options.count:,} hostile messages, seed {options.seed}, folder {folder}")
    ok = False
    try:
        service.start()
        ok = run(service, options)
    finally:
        service.stop()
        if ok:
            shutil.rmtree(folder)
        else:
            print(f"service files kept in {folder}")
    return 0 if ok else 1


def run(service: LiveService, options: argparse.Namespace) -> bool:
    fuzz = Fuzz(service, options)
    with psycopg.connect(options.dsn, autocommit=True) as conn:
        conn.execute(NOTIFY_BATCH, (service.channel, [fuzz.canary]))
        fuzz.canaries_sent += 1
        deadline = time.monotonic() + 30
        while fuzz.canaries_run() < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        before = service.status()
        rss_before, log_before = rss_bytes(service.pid), service.log_bytes()
        started = time.monotonic()
        fuzz.run(conn)
    deadline = time.monotonic() + 60
    while fuzz.canaries_run() < fuzz.canaries_sent and time.monotonic() < deadline:
        if not service.running():
            break
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    fuzz.socket.close()
    running = service.running()
    answers_socket = running and service.answers_alive()
    answers_notify = running and alive_over_pg_notify(options.dsn, service.channel)
    after = service.status() if answers_socket else None
    rss_after, peak = rss_bytes(service.pid), peak_rss_bytes(service.pid)
    log = service.log_text()
    log_written = service.log_bytes() - log_before
    total = sum(fuzz.sent_by_kind.values())

    print(f"sent {total:,} hostile messages + {fuzz.canaries_sent} canaries in {elapsed:.1f} s")
    print("  by kind: " + ", ".join(f"{k} {n:,}" for k, n in sorted(fuzz.sent_by_kind.items())))
    print("  by path: " + ", ".join(f"{k} {n:,}" for k, n in sorted(fuzz.sent_by_path.items())))
    print(f"  socket: {fuzz.socket.replies:,} reply lines, {fuzz.socket.reconnects} reconnects")
    if fuzz.stalled:
        print(f"  stopped early: {fuzz.stalled}")
    rejected: Counter[str] = Counter()
    internal_errors = lost = None
    if after is not None:
        rejected = Counter(after["rejected"]) - Counter(before["rejected"])
        internal_errors = after["rejected"].get("internal_error", 0)
        lost = after["pool"]["lost"]
        finished = Counter(after["finished"]) - Counter(before["finished"])
        print("rejected by reason: " + ", ".join(f"{k} {n:,}" for k, n in rejected.most_common()))
        print(f"finished by outcome: {dict(finished)}; received {after['received']:,}")
        chunks = after["chunks"]
        if isinstance(chunks, dict) and "status" in chunks:
            chunks = chunks["status"]  # the counts; not every partial message
        print(f"queued {after['queued']}, delayed {after['delayed']}, chunks {chunks}")
    decoys = fuzz.decoy_path.stat().st_size if fuzz.decoy_path.exists() else 0
    print(f"registered tasks run with hostile options (decoys): {decoys:,}")
    growth = None if rss_after is None or rss_before is None else rss_after - rss_before
    lines = log.count("\n")
    raw = {name: log.count(char) for name, char in (("CR", "\r"), ("U+2028", "\u2028"))}
    raw["NUL"], raw["ESC"] = log.count("\x00"), log.count("\x1b")

    checks = [
        ("service alive", running),
        ("answers alive over the socket", answers_socket),
        ("answers alive over pg_notify", answers_notify),
        (
            f"canaries run {fuzz.canaries_run()}/{fuzz.canaries_sent}",
            not fuzz.stalled and fuzz.canaries_run() == fuzz.canaries_sent,
        ),
        (f"internal errors: {internal_errors}", internal_errors == 0),
        (f"workers lost: {lost}", lost == 0),
        (
            f"main RSS {mib(rss_before)} -> {mib(rss_after)} (peak {mib(peak)}),"
            f" growth within {options.max_rss_growth:g} MiB",
            growth is not None and growth <= options.max_rss_growth * 2**20,
        ),
        (
            f"log: {log_written:,} bytes written during the run ({lines:,} lines in all),"
            f" within {options.max_log_bytes:,}",
            log_written <= options.max_log_bytes,
        ),
        (f"forged log lines: {forged_lines(log)}", forged_lines(log) == 0),
        (f"raw control characters in the log: {raw}", not any(raw.values())),
    ]
    for label, passed in checks:
        print(f"  [{'ok' if passed else 'FAIL'}] {label}")
    failures = [label for label, passed in checks if not passed]
    if failures:
        internal = [line for line in log.splitlines() if "internal error" in line.lower()]
        if internal:
            print("first internal-error lines of the service log:")
            for line in internal[:5]:
                print(f"    {line[:300]}")
        print(f"FAILED: {len(failures)} check(s); reproduce with --seed {options.seed}")
    else:
        print("all checks passed")
    return not failures


if __name__ == "__main__":
    raise SystemExit(main())

"""The tests' database proxy (support.proxy) holds its port from its start, up or down.

It once picked a port by binding port 0 and closing it, then bound it again at each ``up()``:
meanwhile another process could take it, and the proxy's clients, which connect to that
port, reached something else or nothing.
"""

from __future__ import annotations

import errno
import gc
import socket
from collections.abc import Iterator

import pytest

from support.proxy import DatabaseProxy


@pytest.fixture
def upstream() -> Iterator[str]:
    """A DSN whose server only accepts connections (the proxy's target)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield f"host=127.0.0.1 port={server.getsockname()[1]} dbname=x"


def taken(port: int) -> bool:
    """Whether another socket is refused the port (as another process would be)."""
    with socket.socket() as other:
        try:
            other.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
        return False


def answered(port: int) -> bool:
    """Whether a connection to the port is accepted."""
    with socket.socket() as client:
        client.settimeout(5)
        try:
            client.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return False
        return True


def test_the_proxy_holds_its_port_up_and_down(upstream: str) -> None:
    proxy = DatabaseProxy(upstream)
    try:
        assert (taken(proxy.port), answered(proxy.port)) == (True, False)  # down at first
        proxy.up()
        assert (taken(proxy.port), answered(proxy.port)) == (True, True)
        proxy.down()
        assert (taken(proxy.port), answered(proxy.port)) == (True, False)
        proxy.up()  # again, on the same port
        assert answered(proxy.port)
        proxy.refuse_new()
        assert (taken(proxy.port), answered(proxy.port)) == (True, False)
    finally:
        proxy.down()


def test_a_connection_accepted_as_the_proxy_goes_down_is_closed(upstream: str) -> None:
    """A connection the proxy was forwarding as it went down was added to its sockets after
    they were closed: never closed (a ResourceWarning, an error in this suite, later)."""
    for _ in range(100):
        proxy = DatabaseProxy(upstream)
        proxy.up()
        with socket.create_connection(("127.0.0.1", proxy.port)):
            pass
        proxy.down()
        del proxy
    gc.collect()

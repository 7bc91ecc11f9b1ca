"""worker.sdnotify against a notify socket of the test's own (a path and an abstract name)."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from worker.sdnotify import Heartbeat, Notifier, WatchdogPinger


@pytest.fixture(autouse=True)
def _unfiltered_logs() -> Iterator[None]:
    """capture_logs() keeps the configured level filter; start from structlog's defaults (no filter)."""
    saved = structlog.get_config()
    structlog.reset_defaults()
    try:
        yield
    finally:
        structlog.configure(**saved)


class Receiver:
    """The systemd side: a bound AF_UNIX datagram socket."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address  # the NOTIFY_SOCKET value

    def recv(self, timeout: float = 2.0) -> str:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()

    def drain(self) -> list[str]:
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                out.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass
        return out


@pytest.fixture
def path_receiver() -> Iterator[Receiver]:
    # A short directory: AF_UNIX paths are limited to 107 bytes, pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="sdn") as d:
        path = str(Path(d) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        try:
            yield Receiver(sock, path)
        finally:
            sock.close()


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    name = f"coord-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        yield Receiver(sock, "@" + name)
    finally:
        sock.close()


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest) -> Receiver:
    return request.getfixturevalue(f"{request.param}_receiver")


def test_messages_arrive_in_order(receiver: Receiver) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": receiver.address})
    assert n.enabled
    assert n.ready()
    assert n.status("consuming 2 queues")
    assert n.watchdog()
    assert n.stopping()
    got = [receiver.recv() for _ in range(4)]
    assert got == ["READY=1", "STATUS=consuming 2 queues", "WATCHDOG=1", "STOPPING=1"]
    n.close()


def test_ready_with_status_is_one_datagram(path_receiver: Receiver) -> None:
    n = Notifier(path_receiver.address)
    n.ready(status="up")
    assert path_receiver.recv() == "READY=1\nSTATUS=up"


def test_status_cannot_inject_fields(path_receiver: Receiver) -> None:
    Notifier(path_receiver.address).status("line one\nREADY=1")
    assert path_receiver.recv() == "STATUS=line one READY=1"


def test_reloading_carries_monotonic_usec(path_receiver: Receiver) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier(path_receiver.address).reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = path_receiver.recv().split("\n")
    assert lines[0] == "RELOADING=1"
    key, value = lines[1].split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_extend_timeout(path_receiver: Receiver) -> None:
    Notifier(path_receiver.address).extend_timeout(10)
    assert path_receiver.recv() == "EXTEND_TIMEOUT_USEC=10000000"


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "200000"}, 0.1),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),  # meant for another
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "x"}, None),
    ],
)
def test_watchdog_interval_from_env(env: dict[str, str], interval: float | None) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": "@x", **env})
    assert n.watchdog_interval() == interval


def test_unset_environment_removes_the_variables() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid()), "PATH": "/p"}
    n = Notifier.from_env(env, unset_environment=True)
    assert env == {"PATH": "/p"}
    assert n.address == "@x"
    assert n.watchdog_interval() == 0.1


def test_no_notify_socket_is_a_no_op() -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    assert [n.ready("x"), n.status("x"), n.watchdog(), n.stopping(), n.reloading()] == [False] * 5
    assert n.watchdog_interval() is None
    pinger = WatchdogPinger(n).start()
    assert not pinger.active
    pinger.stop()


def test_missing_socket_path_logs_and_continues() -> None:
    with tempfile.TemporaryDirectory(prefix="sdn") as d:
        n = Notifier(str(Path(d) / "nobody-listens"))
        with capture_logs() as logs:
            assert n.ready() is False
            assert n.watchdog() is False
            assert n.stopping() is False
    # Warned once, not on every ping (the repeats go to debug, which a configured level may filter).
    warnings = [e for e in logs if e["log_level"] in ("warning", "error")]
    assert len(warnings) == 1
    assert warnings[0]["event"] == "sd_notify send failed"


def test_send_recovers_after_the_socket_appears() -> None:
    with tempfile.TemporaryDirectory(prefix="sdn") as d:
        path = str(Path(d) / "notify")
        n = Notifier(path)
        assert n.ready() is False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        try:
            assert n.ready() is True
            assert Receiver(sock, path).recv() == "READY=1"
        finally:
            sock.close()


def test_pinger_pings_at_half_the_watchdog_interval(path_receiver: Receiver) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": path_receiver.address, "WATCHDOG_USEC": "200000"})
    with WatchdogPinger(n) as pinger:
        assert pinger.interval == pytest.approx(0.1)
        assert pinger.active
        time.sleep(0.6)
    assert not pinger.active
    pings = path_receiver.drain()
    assert set(pings) == {"WATCHDOG=1"}
    # ~6-7 expected; tolerant of a loaded machine.
    assert 3 <= len(pings) <= 9, pings


def test_pinger_withholds_pings_while_unhealthy(path_receiver: Receiver) -> None:
    healthy = threading.Event()
    healthy.set()
    n = Notifier.from_env({"NOTIFY_SOCKET": path_receiver.address, "WATCHDOG_USEC": "200000"})
    with capture_logs() as logs, WatchdogPinger(n, healthy.is_set):
        time.sleep(0.35)
        healthy.clear()
        time.sleep(0.15)  # a ping decided before the switch may still land
        assert len(path_receiver.drain()) >= 1
        time.sleep(0.5)
        assert path_receiver.drain() == []  # wedged: systemd would now restart us
        healthy.set()
        time.sleep(0.35)
        assert len(path_receiver.drain()) >= 1  # pings resume
    events = [e["event"] for e in logs]
    assert any("withholding" in e for e in events)
    assert any("resumed" in e for e in events)


def test_pinger_survives_a_raising_health_check(path_receiver: Receiver) -> None:
    def health() -> bool:
        raise RuntimeError("db gone")

    n = Notifier(path_receiver.address, watchdog_usec=100_000)
    with capture_logs() as logs:
        pinger = WatchdogPinger(n, health).start()
        time.sleep(0.2)
        assert pinger.active
        pinger.stop()
    assert path_receiver.drain() == []
    assert any(e["event"] == "watchdog health check raised" for e in logs)


def test_pinger_stops_on_its_event(path_receiver: Receiver) -> None:
    stop = threading.Event()
    n = Notifier(path_receiver.address, watchdog_usec=60_000_000)  # a 30 s interval
    pinger = WatchdogPinger(n, stop_event=stop).start()
    assert path_receiver.recv() == "WATCHDOG=1"  # the first ping goes out at once
    started = time.monotonic()
    stop.set()
    pinger.stop()
    assert not pinger.active
    assert time.monotonic() - started < 2  # the wait is interrupted, not slept out


def test_pinger_to_a_missing_socket_keeps_running() -> None:
    with tempfile.TemporaryDirectory(prefix="sdn") as d:
        n = Notifier(str(Path(d) / "gone"), watchdog_usec=100_000)
        with capture_logs(), WatchdogPinger(n) as pinger:
            time.sleep(0.2)
            assert pinger.active


def test_explicit_interval_overrides_the_environment(path_receiver: Receiver) -> None:
    n = Notifier(path_receiver.address)  # no WATCHDOG_USEC
    assert not WatchdogPinger(n).start().active
    pinger = WatchdogPinger(n, interval=0.05).start()
    try:
        assert path_receiver.recv() == "WATCHDOG=1"
    finally:
        pinger.stop()


def test_heartbeat() -> None:
    hb = Heartbeat(max_age=0.1)
    assert hb()
    time.sleep(0.15)
    assert not hb()
    hb.beat()
    assert hb()
    assert hb.age() < 0.1

"""The systemd notify protocol (sd_notify(3)) over a Unix datagram socket, with no dependency.

systemd passes ``NOTIFY_SOCKET`` (a filesystem path, or an abstract socket name starting with ``@``)
to a ``Type=notify`` service; the service sends newline-separated ``KEY=VALUE`` datagrams to it.
``WATCHDOG_USEC`` (with ``WATCHDOG_PID``) asks for a ``WATCHDOG=1`` ping at least that often.

Every method is a no-op when ``NOTIFY_SOCKET`` is unset (running in a terminal, under tests), and a
send that fails is logged and reported as ``False``, never raised: telling systemd how we are doing
must not be the thing that takes the daemon down.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping

import structlog

log = structlog.get_logger(__name__)

__all__ = ["Heartbeat", "Notifier", "WatchdogPinger"]

_ENV_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
# A blocked send (systemd's queue full) must not stall the caller forever.
_SEND_TIMEOUT_S = 2.0


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Sends sd_notify messages to ``address``; a no-op when ``address`` is None.

    Thread-safe: the watchdog thread and the main loop may share one instance.
    """

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address or None
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failing = False

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, unset_environment: bool = False
    ) -> Notifier:
        """Build from ``NOTIFY_SOCKET`` / ``WATCHDOG_USEC`` / ``WATCHDOG_PID``.

        The watchdog is enabled only when ``WATCHDOG_PID`` is unset or names this process (systemd
        sets it so that children that inherit the environment do not ping). ``unset_environment``
        removes the three variables from ``environ`` (default ``os.environ``) so child processes
        never see them.
        """
        env: Mapping[str, str] = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        watchdog_usec = _parse_watchdog(env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID"))
        if unset_environment and isinstance(env, MutableMapping):
            for key in _ENV_KEYS:
                env.pop(key, None)
        return cls(address, watchdog_usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    # -- the messages -------------------------------------------------------------------------------

    def ready(self, status: str | None = None) -> bool:
        """Start-up finished (``READY=1``); also send after a reload has completed."""
        fields = ["READY=1"]
        if status is not None:
            fields.append(f"STATUS={_one_line(status)}")
        return self.send(*fields)

    def status(self, text: str) -> bool:
        """Free-form status shown by ``systemctl status``."""
        return self.send(f"STATUS={_one_line(text)}")

    def stopping(self) -> bool:
        """Graceful shutdown has begun (``STOPPING=1``)."""
        return self.send("STOPPING=1")

    def watchdog(self) -> bool:
        """Keep-alive ping (``WATCHDOG=1``)."""
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        """A reload has begun; send :meth:`ready` when it is done.

        Carries ``MONOTONIC_USEC`` as ``Type=notify-reload`` (systemd 253+) requires.
        """
        return self.send("RELOADING=1", f"MONOTONIC_USEC={_monotonic_usec()}")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before the start/stop timeout fires (``EXTEND_TIMEOUT_USEC``)."""
        return self.send(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")

    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of ``WATCHDOG_USEC``, as sd_watchdog_enabled(3) advises), or None."""
        if self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2 / 1_000_000

    # -- the transport ------------------------------------------------------------------------------

    def send(self, *fields: str) -> bool:
        """Send ``fields`` as one datagram; True when sent, False when disabled or the send failed."""
        if self.address is None or not fields:
            return False
        payload = "\n".join(fields).encode("utf-8")
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        with self._lock:
            try:
                if self._sock is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    sock.settimeout(_SEND_TIMEOUT_S)
                    self._sock = sock
                self._sock.sendto(payload, target)
            except (OSError, ValueError) as exc:
                # Log the first failure of a run at warning level, the rest at debug: a missing
                # socket would otherwise log on every watchdog ping.
                level = log.debug if self._failing else log.warning
                level("sd_notify send failed", address=self.address, message=fields[0], error=str(exc))
                self._failing = True
                self._close_locked()
                return False
            if self._failing:
                log.info("sd_notify send recovered", address=self.address)
                self._failing = False
            return True

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None


class WatchdogPinger:
    """A daemon thread that sends ``WATCHDOG=1`` every ``interval`` seconds while ``health()`` is True.

    When ``health`` returns False (or raises) the ping is withheld, so a wedged main loop lets
    ``WatchdogSec=`` expire and systemd restarts the service. Pings resume if health comes back.
    ``start()`` does nothing when there is no interval (watchdog not requested).
    """

    def __init__(
        self,
        notifier: Notifier,
        health: Callable[[], bool] = lambda: True,
        *,
        interval: float | None = None,
        stop_event: threading.Event | None = None,
    ) -> None:
        self.notifier = notifier
        self.health = health
        self.interval = interval if interval is not None else notifier.watchdog_interval()
        self.stop_event = stop_event if stop_event is not None else threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> WatchdogPinger:
        if self.interval is None or self.interval <= 0 or not self.notifier.enabled or self.active:
            return self
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> WatchdogPinger:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        assert self.interval is not None
        healthy = True
        while not self.stop_event.is_set():
            try:
                ok = bool(self.health())
            except Exception as exc:
                log.warning("watchdog health check raised", error=repr(exc))
                ok = False
            if ok:
                self.notifier.watchdog()
                if not healthy:
                    log.info("watchdog pings resumed")
            elif healthy:
                log.error("health check failed; withholding watchdog pings")
            healthy = ok
            self.stop_event.wait(self.interval)


class Heartbeat:
    """A health callback for :class:`WatchdogPinger`: healthy while ``beat()`` was called in the last
    ``max_age`` seconds. The main loop calls ``beat()`` once per turn."""

    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self._last = time.monotonic()

    def beat(self) -> None:
        self._last = time.monotonic()

    def age(self) -> float:
        return time.monotonic() - self._last

    def __call__(self) -> bool:
        return self.age() <= self.max_age


def _parse_watchdog(usec: str | None, pid: str | None) -> int | None:
    if not usec:
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring malformed WATCHDOG_USEC", value=usec)
        return None
    if value <= 0:
        return None
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            log.warning("ignoring malformed WATCHDOG_PID", value=pid)
            return None
    return value


def _one_line(text: str) -> str:
    # A newline inside STATUS= would start a new (bogus) assignment.
    return " ".join(str(text).splitlines())

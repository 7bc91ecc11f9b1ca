"""Telling people an approval is waiting: a structured log event always, plus optional channels.

Channels come from the settings: `notify_webhook_url` (a JSON POST, e.g. a Slack incoming webhook) and
`notify_command` (an argv list run without a shell, the message as JSON on stdin). Each channel of each
approval is its own outbox job (`notify_approval`, ref `<approval id>:<channel>`), so a webhook that is
down is retried with the outbox's backoff without re-running the command, and never holds up the job
that proposed. One delivery attempt is short (a timeout of a few seconds); the retries are the outbox's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.error
import urllib.request
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from coord.db.models import Approval, OutboxJob
from coord.errors import CoordError
from coord.logs import get_logger

log = get_logger(__name__)

WEBHOOK_TIMEOUT = 5.0
COMMAND_TIMEOUT = 10.0
_COMMAND_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")


class NotifyFailed(CoordError):
    """A notification could not be delivered; the outbox retries it."""

    code = "notify_failed"


def channels(settings: Any) -> list[str]:
    out = []
    if settings.notify_webhook_url:
        out.append("webhook")
    if settings.notify_command:
        out.append("command")
    return out


def message(approval: Approval) -> dict[str, Any]:
    """What every channel sends: the facts a person needs to decide, and how to decide."""
    details = approval.details or {}
    target = (details.get("server") or details.get("tool") or (details.get("agent") or {}).get("name")
              or details.get("query") or "?")
    text = (f"coord: approval needed to {approval.action.replace('_', ' ')} {target!r} "
            f"(safety {approval.safety_score:.2f}): {approval.reason}. "
            f"Decide with `coord approvals approve {approval.id} --by <you>` or `... reject`; "
            f"expires {_iso(approval.expires_at)}.")
    return {
        "text": text,  # what Slack and most chat webhooks display
        "event": "approval.requested",
        "approval": {
            "id": approval.id, "proposal_id": approval.proposal_id, "action": approval.action, "target": target,
            "requested_by": approval.requested_by, "safety_score": approval.safety_score,
            "reason": approval.reason, "created_at": _iso(approval.created_at),
            "expires_at": _iso(approval.expires_at),
        },
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def post_webhook(url: str, body: dict[str, Any], timeout: float | None = None) -> int:
    """POST `body` as JSON; the HTTP status on 2xx, NotifyFailed otherwise. The URL is never logged whole:
    chat webhook URLs are secrets."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise NotifyFailed(f"notify_webhook_url must be an http(s) URL, not a {parts.scheme or 'relative'} one")
    request = urllib.request.Request(
        url, data=json.dumps(body).encode("utf-8"), method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "coord-notifier"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout or WEBHOOK_TIMEOUT) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        raise NotifyFailed(f"webhook at {parts.hostname} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NotifyFailed(f"webhook at {parts.hostname} unreachable: {reason}") from None


def run_command(argv: list[str], body: dict[str, Any], timeout: float | None = None) -> None:
    """Run `argv` (no shell) with the message as JSON on stdin; NotifyFailed on a non-zero exit or timeout."""
    if not argv or not all(isinstance(a, str) and a and "\x00" not in a for a in argv):
        raise NotifyFailed("notify_command must be a non-empty argv list of strings")
    env = {k: os.environ[k] for k in _COMMAND_ENV if k in os.environ}
    env["COORD_EVENT"] = body.get("event", "")
    env["COORD_APPROVAL_ID"] = (body.get("approval") or {}).get("id", "")
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=env, start_new_session=True, close_fds=True)
    except OSError as exc:
        raise NotifyFailed(f"notify_command {argv[0]!r} could not start: {exc.strerror}") from None
    try:
        _, err = proc.communicate(json.dumps(body).encode("utf-8"), timeout=timeout or COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own process group: children go too
        proc.wait()
        limit = timeout or COMMAND_TIMEOUT
        raise NotifyFailed(f"notify_command {argv[0]!r} ran over {limit:.0f}s and was killed") from None
    if proc.returncode != 0:
        tail = err.decode("utf-8", "replace").strip()[-300:]
        raise NotifyFailed(f"notify_command {argv[0]!r} exited with {proc.returncode}: {tail}")


def notify_job(db: Any, outbox_id: str, ctx: Any) -> list[str]:
    """The `notify_approval` job (run with `OwnTransactions`): deliver one channel of one approval with no
    transaction open, so a slow webhook never holds SQLite's write lock. Raises to be retried."""
    with db.reader() as s:
        row = s.get(OutboxJob, outbox_id)
        payload = row.payload or {}
        approval_id = payload.get("approval_id") or row.ref_id.rsplit(":", 1)[0]
        channel = payload.get("channel") or row.ref_id.rsplit(":", 1)[-1]
        approval = s.get(Approval, approval_id)
        if approval is None or approval.status != "pending":
            log.info("notify.skipped", approval_id=approval_id, channel=channel,
                     reason="gone" if approval is None else f"already {approval.status}")
            return []
        body = message(approval)
    settings = ctx.settings
    if channel == "webhook" and settings.notify_webhook_url:
        status = post_webhook(settings.notify_webhook_url, body)
        log.info("notify.sent", approval_id=approval_id, channel=channel, http_status=status)
    elif channel == "command" and settings.notify_command:
        run_command(list(settings.notify_command), body)
        log.info("notify.sent", approval_id=approval_id, channel=channel)
    else:
        log.info("notify.skipped", approval_id=approval_id, channel=channel, reason="channel no longer configured")
    return []


__all__ = ["NotifyFailed", "channels", "message", "notify_job", "post_webhook", "run_command"]

"""Allowed values of the status and kind columns, in one place."""

from __future__ import annotations

PRIORITIES = {"low": 0, "medium": 1, "high": 2, "critical": 3}
PRIORITY_NAMES = {v: k for k, v in PRIORITIES.items()}

TASK_TYPES = ("delegation", "collaboration", "review", "handoff")
TASK_OPEN = ("pending", "claimed")
TASK_FINAL = ("completed", "failed", "cancelled")

GAP_TYPES = ("tool", "mcp", "agent", "expertise")
GAP_STATUSES = ("pending", "in_progress", "resolved", "wont_fix")

APPROVAL_FINAL = ("approved", "rejected", "expired")

# Outbox job names: the only jobs the worker runs (handlers in coord.jobs).
JOB_DISPATCH = "dispatch"
JOB_PROPOSE = "propose"
JOB_EXECUTE = "execute"
JOB_NOTIFY_APPROVAL = "notify_approval"
JOB_INSTALL = "install"  # runs an install plan; queued by `execute` (coord.installer.service)
JOB_EMBED = "embed"  # embeds agents that lack a current vector; queued by registry upserts (coord.matching.index)

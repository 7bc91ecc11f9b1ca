"""The CoordError family: one base, flat typed subclasses, exit codes mapped once.

Every entry point (client API, CLI, MCP server, file and catalog loaders) raises one of these, with a
message a person can act on. The CLI maps `exit_code`, the MCP server maps `code`, nothing else does.
"""

from __future__ import annotations

from typing import Any


class CoordError(Exception):
    """Something went wrong in coord."""

    exit_code = 1
    code = "error"

    def __init__(self, message: str | None = None, **details: Any) -> None:
        super().__init__(message or (self.__doc__ or "").strip())
        self.details = details

    @property
    def message(self) -> str:
        return str(self.args[0])

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **({"details": self.details} if self.details else {})}


class InvalidInput(CoordError):
    """The input is not valid."""

    exit_code = 2
    code = "invalid_input"


class SettingsError(InvalidInput):
    """A setting has an invalid value."""

    exit_code = 78  # EX_CONFIG: systemd and shells recognise it as a configuration error
    code = "invalid_settings"


class NotFound(CoordError):
    """The thing asked for does not exist."""

    exit_code = 3
    code = "not_found"


class Conflict(CoordError):
    """The request conflicts with the current state (stale lease, decided approval, id reuse)."""

    exit_code = 4
    code = "conflict"


class LeaseLost(Conflict):
    """The lease on this task is no longer yours: it expired or another agent claimed the task."""

    code = "lease_lost"


class PolicyDenied(CoordError):
    """The policy forbids this action."""

    exit_code = 5
    code = "policy_denied"


class FileFormatError(InvalidInput):
    """A file could not be parsed; it was left untouched."""

    code = "file_format"


class Unavailable(CoordError):
    """A required service (database, queue) cannot be reached."""

    exit_code = 69  # EX_UNAVAILABLE
    code = "unavailable"

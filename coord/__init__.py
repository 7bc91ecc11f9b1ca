"""coord: agents delegate, collaborate, and get their capability gaps closed.

The public surface: the client, its result types, the settings loader and the errors.
"""

from coord.client import Coordinator
from coord.errors import (
    Conflict,
    CoordError,
    FileFormatError,
    InvalidInput,
    LeaseLost,
    NotFound,
    PolicyDenied,
    SettingsError,
    Unavailable,
)
from coord.results import (
    AgentInfo,
    Candidate,
    Claim,
    CollaborationResult,
    DelegationResult,
    GapResult,
    InboxItem,
    TaskInfo,
)
from coord.settings import Settings, load_settings

__all__ = [
    # results
    "AgentInfo",
    "Candidate",
    "Claim",
    "CollaborationResult",
    # errors
    "Conflict",
    "CoordError",
    # client
    "Coordinator",
    "DelegationResult",
    "FileFormatError",
    "GapResult",
    "InboxItem",
    "InvalidInput",
    "LeaseLost",
    "NotFound",
    "PolicyDenied",
    "Settings",
    "SettingsError",
    "TaskInfo",
    "Unavailable",
    "load_settings",
]

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
    AgentProposalResult,
    ApprovalInfo,
    Candidate,
    Claim,
    CollaborationResult,
    CollaborationStatus,
    DelegationResult,
    GapResult,
    InboxItem,
    ProposalInfo,
    TaskInfo,
)
from coord.settings import Settings, load_settings

__all__ = [
    # the client and its settings
    "Coordinator",
    "Settings",
    "load_settings",
    # results
    "AgentInfo",
    "AgentProposalResult",
    "ApprovalInfo",
    "Candidate",
    "Claim",
    "CollaborationResult",
    "CollaborationStatus",
    "DelegationResult",
    "GapResult",
    "InboxItem",
    "ProposalInfo",
    "TaskInfo",
    # errors
    "Conflict",
    "CoordError",
    "FileFormatError",
    "InvalidInput",
    "LeaseLost",
    "NotFound",
    "PolicyDenied",
    "SettingsError",
    "Unavailable",
]

"""coord: agents delegate, collaborate, and get their capability gaps closed.

The public surface: the client, its result types, the settings loader and the errors.
"""

from typing import TYPE_CHECKING

# Lazy (PEP 562): `import coord` is cheap, so CLI commands and parser processes only pay for what
# they use; `from coord import Coordinator` still works as usual.
_EXPORTS = {
    "Coordinator": "coord.client",
    "Settings": "coord.settings",
    "load_settings": "coord.settings",
    **{name: "coord.results" for name in (
        "AgentInfo", "AgentProposalResult", "ApprovalInfo", "Candidate", "Claim", "CollaborationResult",
        "CollaborationStatus", "DelegationResult", "GapResult", "InboxItem", "ProposalInfo", "TaskInfo",
    )},
    **{name: "coord.errors" for name in (
        "Conflict", "CoordError", "FileFormatError", "InvalidInput", "LeaseLost", "NotFound", "PolicyDenied",
        "SettingsError", "Unavailable",
    )},
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'coord' has no attribute {name!r}")


if TYPE_CHECKING:  # for type checkers and IDEs
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

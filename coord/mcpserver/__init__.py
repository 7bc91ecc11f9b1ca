"""coord as an MCP server: agents coordinate through tools their host already knows how to call.

- `tools`: the agent-facing tools, one per client method, bound to one agent identity.
- `server`: the MCPServer (stdio, or streamable HTTP on 127.0.0.1) with those tools and two resources.
- `clientconfig`: writes coord itself into a Claude Code / Claude Desktop MCP config.
- `pinning`: hashes an installed MCP server's tools and reports drift from the approved hash.

Named `mcpserver`, not `mcp`, so `import mcp` always means the SDK.
"""

from __future__ import annotations


def require_sdk() -> None:
    """The MCP SDK is an optional extra: say how to get it instead of failing on an import."""
    try:
        import mcp.server.mcpserver  # noqa: F401
    except ImportError as exc:
        from coord.errors import Unavailable

        raise Unavailable(
            f"the MCP Python SDK (mcp>=2) is not installed ({exc}); install coord with the mcp extra: "
            "pip install 'coord[mcp]'"
        ) from None

"""`zturbo mcp`: the MCP tools over stdio, on the server's own state (queue, history, output folder).

The process runs the same worker as `zturbo serve` on the same data directory, so images an agent
makes over stdio are in that server's `/history` and gallery. The SDK points fd 1 at stderr while it
serves, so nothing the engine prints can corrupt the protocol.
"""

from __future__ import annotations

import asyncio

from zturbo.server.app import _registry_for, default_executor
from zturbo.server.config import ServerConfig
from zturbo.server.mcp_tools import build_mcp
from zturbo.server.protocols import ExecutorLike
from zturbo.server.state import ServerState, build_state


def stdio_state(config: ServerConfig, executor: ExecutorLike | None = None) -> ServerState:
    config.ensure_dirs()
    executor = executor if executor is not None else default_executor(config)
    return build_state(config, executor, _registry_for(executor))


async def serve_stdio(state: ServerState) -> None:
    state.hub.bind_loop(asyncio.get_running_loop())
    state.worker.start()
    try:
        await build_mcp(state).run_stdio_async()
    finally:
        await asyncio.to_thread(state.worker.stop)
        state.history.close()


def run(config: ServerConfig, executor: ExecutorLike | None = None) -> None:
    asyncio.run(serve_stdio(stdio_state(config, executor)))

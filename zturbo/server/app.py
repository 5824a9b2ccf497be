"""App factory and runner. Everything stateful is built here and hung on `app.state.zturbo`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI

from zturbo.errors import InputError
from zturbo.server.compat import JsonBodyMiddleware
from zturbo.server.config import ServerConfig
from zturbo.server.errors import CatchAllMiddleware, install_error_handlers
from zturbo.server.protocols import ExecutorLike, RegistryLike
from zturbo.server.routes import (
    comfy_extras,
    creator,
    files,
    frontend,
    history,
    internal,
    jobs,
    model_files,
    openai,
    presets,
    prompt,
    queue,
    sdapi,
    system,
    workers,
    ws,
)
from zturbo.server.security import (
    BodyLimitMiddleware,
    HostGuardMiddleware,
    OriginGuardMiddleware,
    TokenAuthMiddleware,
)
from zturbo.server.state import ServerState, build_state
from zturbo.server.web_mount import ComfyPrefixMiddleware, mount_web

if TYPE_CHECKING:
    from zturbo.parallel import ContextGroup

log = logging.getLogger(__name__)
ROUTERS = (
    prompt.router,
    queue.router,
    history.router,
    files.router,
    system.router,
    jobs.router,
    ws.router,
    comfy_extras.router,  # before `frontend`: its `/userdata/{a}/move/{b}` must win over `/userdata/{name}`
    frontend.router,
    creator.router,
    presets.router,
    model_files.router,
    internal.router,
    workers.router,
)
# Other clients' APIs, at their own paths only (no `/api` twin): OpenAI images, AUTOMATIC1111.
CLIENT_ROUTERS = (openai.router, sdapi.router)


def default_executor(config: ServerConfig) -> ExecutorLike:
    """The real graph executor; imported here so the server package loads without torch models."""
    from zturbo.graph.executor import PromptExecutor
    from zturbo.nodes.registry import default_registry
    from zturbo.workflows import make_context

    context = make_context(
        config.engine,
        models_dir=config.models_dir,
        output_dir=config.output_dir,
        input_dir=config.input_dir,
        temp_dir=config.temp_dir,
    )
    return PromptExecutor(default_registry(context), context)


def start_context_parallel(config: ServerConfig, executor: ExecutorLike) -> ContextGroup | None:
    """`--cp G`: the followers, and the executor's engine as rank 0 (None when off). Only the real
    executor's engine can drive them."""
    if config.cp <= 1:
        return None
    from zturbo import parallel

    engine = executor.context.engine  # type: ignore[attr-defined]  # default_executor's PromptExecutor
    group = parallel.start(config.cp, config.engine, cpu=config.engine.device == "cpu", flag="--cp")
    parallel.attach(engine, group)
    log.info("context parallel: the DiT runs split over %d processes (%s)", config.cp, group.launch.backend)
    return group


def _close_group(group: ContextGroup, worker: object) -> None:
    """After the worker stopped: STOP the followers, or kill them if a prompt still runs (its forward
    may be inside a collective that a STOP would be mistaken for)."""
    if getattr(worker, "alive", False):
        group.abort()
    else:
        group.close()


def _registry_for(executor: ExecutorLike) -> RegistryLike:
    registry = getattr(executor, "registry", None)
    if registry is not None:
        return registry
    from zturbo.nodes.registry import default_registry

    return default_registry()


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state = app.state.zturbo
    state.hub.bind_loop(asyncio.get_running_loop())
    state.logs.attach()
    state.worker.start()
    try:
        async with AsyncExitStack() as stack:
            for manager in app.state.mcp_managers:  # the MCP endpoint's session task group
                await stack.enter_async_context(manager.run())
            yield
    finally:
        state.logs.detach()
        await asyncio.to_thread(state.worker.stop)
        if app.state.context_group is not None:
            await asyncio.to_thread(_close_group, app.state.context_group, state.worker)
        state.history.close()


def _mount_mcp(app: FastAPI, state: ServerState) -> list:
    """The MCP streamable HTTP endpoint at `/mcp` (zturbo.server.mcp_tools); none without the SDK."""
    try:
        from zturbo.server.mcp_tools import mount_http
    except ImportError:  # the `mcp` package is missing
        log.info("MCP endpoint off: the `mcp` package is not installed")
        return []
    return [mount_http(app, state)]


def create_app(
    config: ServerConfig, *, executor: ExecutorLike | None = None, registry: RegistryLike | None = None
) -> FastAPI:
    """Build the app; raises `InputError` for a config that must not serve (non-loopback, no token)."""
    config.check_serving()
    config.ensure_dirs()
    group = None
    if executor is None:
        executor = default_executor(config)
        group = start_context_parallel(config, executor)
    elif config.cp > 1:
        raise InputError("--cp runs on the server's own engine (not a given executor)")
    state = build_state(config, executor, registry if registry is not None else _registry_for(executor))
    app = FastAPI(title="zturbo", lifespan=_lifespan, docs_url=None, redoc_url=None)
    app.state.zturbo = state
    app.state.context_group = group
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
        app.include_router(router, prefix="/api")
    for router in CLIENT_ROUTERS:
        app.include_router(router)
    app.state.mcp_managers = _mount_mcp(app, state)
    mount_web(app, config)
    # Added innermost first: Host, then origin, then auth, all before any body is read.
    app.add_middleware(JsonBodyMiddleware)
    app.add_middleware(
        BodyLimitMiddleware,
        request_limit=config.max_request_bytes,
        upload_limit=config.max_upload_bytes,
        prompt_limit=min(config.max_prompt_bytes, config.max_request_bytes),
    )
    if config.auth_token:
        app.add_middleware(TokenAuthMiddleware, token=config.auth_token)
    app.add_middleware(OriginGuardMiddleware, allowed_hosts=config.allowed_hosts)
    app.add_middleware(HostGuardMiddleware, config=config)
    app.add_middleware(CatchAllMiddleware)
    app.add_middleware(ComfyPrefixMiddleware)  # outermost: every check sees the real route's path
    return app


def serve(config: ServerConfig, *, executor: ExecutorLike | None = None) -> None:
    """Run until Ctrl-C. Refuses a non-loopback host without an auth token before binding."""
    import uvicorn

    from zturbo.server.uvicorn_setup import uvicorn_config

    app = create_app(config, executor=executor)
    host = f"[{config.host}]" if ":" in config.host else config.host
    log.info("zturbo serving on http://%s:%d (state in %s)", host, config.port, config.data_dir)
    uvicorn.Server(uvicorn_config(app, config.host, config.port)).run()

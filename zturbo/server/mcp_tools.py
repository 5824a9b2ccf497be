"""MCP (Model Context Protocol) tools on the official `mcp` SDK: `generate_image`, `enhance_prompt`,
`list_models`, served over stdio (`zturbo mcp`) and streamable HTTP (`/mcp` on `zturbo serve`).

Both transports call the same `ServerState` as the HTTP routes: jobs go through the queue, history
and output folder (`client_jobs`), so an agent's images show in `/history` and the gallery.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ImageContent, TextContent
from pydantic import ValidationError

from zturbo.checkpoints import layout
from zturbo.errors import ZTurboError
from zturbo.models.prompt_enhancer import DEFAULT_MAX_NEW_TOKENS
from zturbo.request import GenerationRequest
from zturbo.server import client_jobs
from zturbo.server.creator import model_files
from zturbo.server.enhance import EnhanceRequest, run_enhance
from zturbo.server.schemas import validation_message
from zturbo.server.state import ServerState

CLIENT = "mcp"
MCP_PATH = "/mcp"


def build_mcp(state: ServerState) -> MCPServer:
    """An MCPServer whose tools act on `state`."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    server: MCPServer = MCPServer("zturbo", instructions="Local Z-Image text-to-image generation.")
    root.handlers[:], root.level = saved  # the SDK calls logging.basicConfig; the server's logging stays ours
    for add in (_add_generate, _add_enhance, _add_list_models):
        add(server, state)
    return server


def _add_generate(server: MCPServer, state: ServerState) -> None:
    @server.tool()
    async def generate_image(
        prompt: str,
        width: int = 1024,
        height: int = 1024,
        steps: int = 8,
        seed: int = -1,
        negative_prompt: str = "",
        cfg: float = 1.0,
        batch: int = 1,
    ) -> list[ImageContent | TextContent]:
        """Generate images from a text prompt (Z-Image; width and height multiples of 16; seed -1 = random).
        Returns the PNGs and a line with the settings and where the images were saved."""
        request = GenerationRequest(
            prompt, negative=negative_prompt, width=width, height=height, steps=steps, cfg=cfg, batch=batch
        )
        request = client_jobs.with_seed(request, seed)
        try:
            result = await client_jobs.run_request(state, request, CLIENT)
        except ZTurboError as exc:
            raise ToolError(str(exc)) from None
        return [
            *(
                ImageContent(
                    type="image", data=base64.b64encode(i.data).decode("ascii"), mime_type="image/png"
                )
                for i in result.images
            ),
            TextContent(type="text", text=_summary(result)),
        ]


def _add_enhance(server: MCPServer, state: ServerState) -> None:
    @server.tool()
    async def enhance_prompt(prompt: str, seed: int = 0, max_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> str:
        """Rewrite a short idea into a detailed visual description (in the idea's language) with the
        Qwen3 text encoder the server generates with; the same seed gives the same text."""
        try:
            body = EnhanceRequest(prompt=prompt, seed=seed, max_tokens=max_tokens)
        except ValidationError as exc:
            raise ToolError(validation_message(exc, "enhance_prompt")) from None
        try:
            return str((await run_enhance(state, body, CLIENT))["prompt"])
        except ZTurboError as exc:
            raise ToolError(str(exc)) from None


def _add_list_models(server: MCPServer, state: ServerState) -> None:
    @server.tool()
    def list_models() -> str:
        """The model files the server has, by folder, and the ones it generates with."""
        return json.dumps(models_summary(state), ensure_ascii=False, indent=1)


def _summary(result: client_jobs.ClientResult) -> str:
    r = result.request
    saved = ", ".join(
        f"{i.ref['subfolder']}/{i.ref['filename']}" if i.ref["subfolder"] else i.ref["filename"]
        for i in result.images
    )
    return (
        f"{len(result.images)} image(s), {r.width}x{r.height}, {r.steps} steps, cfg {r.cfg}, seed {r.seed}; "
        f"prompt id {result.prompt_id}; saved in the output folder as {saved}"
    )


def models_summary(state: ServerState) -> dict[str, Any]:
    models_dir = state.config.models_dir
    folders = ("diffusion_models", "text_encoders", "vae", "loras", "model_patches", "upscale_models")
    files = model_files(models_dir)
    return {
        "in_use": {"diffusion_model": files.dit, "text_encoder": files.text_encoder, "vae": files.vae},
        "files": {folder: layout.model_names(models_dir, folder) for folder in folders},
    }


def mount_http(app: Any, state: ServerState) -> Any:
    """Add the streamable HTTP endpoint at `/mcp`; returns the session manager to run in the lifespan.
    The SDK's own Host/Origin check is off: the server's middleware (security.py) guards `/mcp` with
    every other route, auth token included, and knows `--allowed-host`."""
    from mcp.server.transport_security import TransportSecuritySettings

    server = build_mcp(state)
    security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    sub = server.streamable_http_app(streamable_http_path=MCP_PATH, transport_security=security)
    app.router.routes.extend(sub.routes)
    return server.session_manager

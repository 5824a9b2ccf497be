"""One job model for the non-ComfyUI clients (OpenAI images, AUTOMATIC1111, MCP).

A client's request becomes a `GenerationRequest`, then the creator page's graph (`creator.build_graph`,
the graph `zturbo generate` writes into its PNGs), validated by the executor and queued as any
`POST /prompt` is: the same queue, journal, history, WebSocket events and output folder. The client
waits for the history entry and reads the saved PNGs back.

Images a client sends (init images, masks) are stored in `input/<client>/` under fresh names
(`output.naming`'s rule: never overwrite), through the same pixel cap as uploads.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from zturbo.errors import GenerationError, InputError, Interrupted
from zturbo.images import open_image
from zturbo.request import GenerationRequest
from zturbo.sampling.noise import SEED_MAX
from zturbo.server import paths
from zturbo.server.creator import GraphRequest, build_graph
from zturbo.server.queue import QueueItem
from zturbo.server.state import ServerState

CLIENT_KEY = "zturbo_client"  # extra_data key naming the API a job came from
DEFAULT_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class ClientImage:
    ref: dict[str, str]  # {"filename", "subfolder", "type"}: what /view serves
    data: bytes  # the saved PNG


@dataclass(frozen=True)
class ClientResult:
    prompt_id: str
    request: GenerationRequest
    images: list[ClientImage]


def random_seed() -> int:
    """A client's "random seed" (-1 in A1111, absent in OpenAI): drawn here so history records it."""
    return int.from_bytes(uuid.uuid4().bytes[:6], "little") % (SEED_MAX + 1)


def queue_request(state: ServerState, request: GenerationRequest, client: str) -> str:
    """Validate and queue one request; returns its prompt id. Bad input raises `InputError` before
    anything is queued."""
    folders = {"input": state.config.input_dir, "output": state.config.output_dir}
    body = GraphRequest(settings=request, filename_prefix=client)
    return queue_graph(state, build_graph(body, state.registry, state.config.models_dir, folders), client)


def queue_graph(state: ServerState, graph: dict[str, Any], client: str, client_id: str | None = None) -> str:
    """Validate and queue an API-format graph for `client` (its WebSocket events to `client_id`, if
    given); returns its prompt id. Bad input raises `InputError` before anything is queued."""
    result = state.executor.validate(graph, None)
    if not result.ok:
        raise InputError(_validation_message(result))
    prompt_id = str(uuid.uuid4())
    extra_data: dict[str, Any] = {CLIENT_KEY: client, "create_time": int(time.time() * 1000)}
    if client_id:
        extra_data["client_id"] = client_id
    item = QueueItem(state.queue.next_number(), prompt_id, graph, extra_data, list(result.outputs))
    state.submit(item)
    return prompt_id


def _validation_message(result: Any) -> str:
    error = result.error if isinstance(result.error, dict) else {}
    parts = [str(error.get("message") or "invalid request")]
    for node_id, node in (result.node_errors or {}).items():
        for entry in node.get("errors", []) if isinstance(node, dict) else []:
            parts.append(f"node {node_id}: {entry.get('details') or entry.get('message')}")
    return "; ".join(parts)


async def wait_for(state: ServerState, prompt_id: str, timeout: float = DEFAULT_TIMEOUT_S) -> dict:
    """The prompt's history entry once it is recorded; raises `Interrupted` or `GenerationError`
    for a job that did not succeed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = await asyncio.to_thread(state.history.get, prompt_id)
        if entry is not None:
            return _checked(entry)
        await asyncio.sleep(0.1)
    raise GenerationError(f"job {prompt_id} did not finish within {timeout:.0f} s")


def _checked(entry: dict) -> dict:
    status = entry.get("status") or {}
    if status.get("status_str") == "success":
        return entry
    for kind, data in status.get("messages") or []:
        if kind == "execution_interrupted":
            raise Interrupted("the job was interrupted")
        if kind == "execution_error":
            node = data.get("node_type") or data.get("node_id") or "a node"
            raise GenerationError(f"{node} failed: {data.get('exception_message', 'unknown error')}")
    raise GenerationError("the job failed")


def saved_images(state: ServerState, entry: dict) -> list[ClientImage]:
    """The entry's saved (`type: output`) images, read back from the output folder."""
    found = []
    for node_out in (entry.get("outputs") or {}).values():
        for image in (node_out or {}).get("images") or []:
            if image.get("type") != "output":
                continue
            path = paths.readable_file(state.config.output_dir, image.get("subfolder", ""), image["filename"])
            ref = {"filename": image["filename"], "subfolder": image.get("subfolder", ""), "type": "output"}
            found.append(ClientImage(ref, path.read_bytes()))
    return found


async def run_request(state: ServerState, request: GenerationRequest, client: str) -> ClientResult:
    """Queue, wait, read back: what every client route does. The seed drawn (if any) is in `request`."""
    prompt_id = await asyncio.to_thread(queue_request, state, request, client)
    entry = await wait_for(state, prompt_id)
    images = await asyncio.to_thread(saved_images, state, entry)
    return ClientResult(prompt_id, request, images)


def store_input(state: ServerState, data: bytes, client: str, what: str, *, mask: str = "") -> str:
    """Save a client's image into `input/<client>/` under a fresh name; returns the LoadImage name.

    `mask="alpha_inverted"` stores an OpenAI-style mask (transparent = edit) as a white-is-repaint
    grey image, the convention of zturbo's `mask` field; `mask="invert"` a black-is-repaint one."""
    if len(data) > state.config.max_upload_bytes:
        raise InputError(f"{what}: {len(data)} bytes is over the {state.config.max_upload_bytes}-byte limit")
    with open_image(data, what, state.config.max_image_pixels) as img:
        try:
            img.load()
        except OSError as exc:
            raise InputError(f"{what}: the image data is damaged ({exc})") from None
        picture = img.copy()
    if mask == "alpha_inverted":
        if "A" not in picture.getbands():
            raise InputError(f"{what}: expected a PNG with transparency (transparent = the area to edit)")
        from PIL import ImageOps

        picture = ImageOps.invert(picture.getchannel("A"))
    elif mask == "invert":
        from PIL import ImageOps

        picture = ImageOps.invert(picture.convert("L"))
    folder = paths.writable_folder(state.config.input_dir, client)
    name = _fresh_name(folder)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    (folder / name).write_bytes(buffer.getvalue())
    return f"{client}/{name}"


def _fresh_name(folder: Path) -> str:
    while True:
        name = f"{uuid.uuid4().hex[:16]}.png"
        if not (folder / name).exists():
            return name


def has_transparency(data: bytes, what: str) -> bool:
    with open_image(data, what) as img:
        if "A" not in img.getbands():
            return False
        low, _ = img.getchannel("A").getextrema()  # one band: (min, max)
        return int(low) < 255  # type: ignore[arg-type]


def with_seed(request: GenerationRequest, seed: int | None) -> GenerationRequest:
    return replace(request, seed=random_seed() if seed is None or seed < 0 else seed)

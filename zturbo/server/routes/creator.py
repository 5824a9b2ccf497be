"""`/zturbo/...`: what the creator page asks beyond ComfyUI's API.

- `POST /zturbo/graph` settings → the API graph to queue with `POST /prompt`, and guardrail warnings
- `POST /zturbo/inspect` a dropped PNG or workflow JSON → settings, prompt, workflow
- `GET /zturbo/gallery` finished images with their settings
- `POST /zturbo/outputs/delete` delete an output image (and its history entry once empty)
- `GET /zturbo/control/preview` the preprocessed ControlNet map of an input image (PNG)
- `POST /zturbo/enhance` an idea → the enhanced prompt (queued; text streamed as `zturbo_enhance` events)
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Query, Response, UploadFile
from pydantic import BaseModel, Field

from zturbo.guardrails import model_variant, warnings_for
from zturbo.server.creator import GraphRequest, build_graph, model_files
from zturbo.server.deps import Config, History, State
from zturbo.server.enhance import EnhanceRequest, run_enhance
from zturbo.server.errors import PayloadTooLargeError
from zturbo.server.gallery import delete_output, gallery_items
from zturbo.server.inspection import inspect_bytes

router = APIRouter(prefix="/zturbo", tags=["creator"])


class DeleteOutput(BaseModel):
    # Generous bounds: the path checks give the precise reason (255 bytes a name) for anything longer.
    filename: str = Field(min_length=1, max_length=4096)
    subfolder: str = Field(default="", max_length=4096)


@router.post("/graph")
def graph(body: GraphRequest, state: State, config: Config) -> dict:
    folders = {"input": config.input_dir, "output": config.output_dir}
    prompt = build_graph(body, state.registry, config.models_dir, folders)
    variant = model_variant(model_files(config.models_dir).dit)
    return {"prompt": prompt, "warnings": warnings_for(body.settings, variant)}


@router.post("/enhance")
async def enhance(body: EnhanceRequest, state: State) -> dict:
    """The creator page's ✨ button: {prompt, seed, max_tokens, system?, client_id?} → {prompt, ...}."""
    return await run_enhance(state, body, "creator")


@router.post("/inspect")
def inspect(state: State, config: Config, file: Annotated[UploadFile, File()]) -> dict:
    data = file.file.read(config.max_upload_bytes + 1)
    if len(data) > config.max_upload_bytes:
        raise PayloadTooLargeError(f"file over {config.max_upload_bytes} bytes")
    return inspect_bytes(data, state.registry, config.models_dir, config.max_image_pixels).as_json()


@router.get("/gallery")
def gallery(history: History, config: Config, limit: int = Query(default=100, ge=1, le=1000)) -> dict:
    return {"items": gallery_items(history, config.output_dir, limit)}


@router.post("/outputs/delete")
def delete(body: DeleteOutput, history: History, config: Config) -> dict:
    return delete_output(history, config.output_dir, body.filename, body.subfolder)


@router.get("/control/preview")
def control_preview(
    config: Config,
    image: str = Query(min_length=1, max_length=500),
    kind: str = Query(default="canny", alias="type"),
    low: float = Query(default=0.4, ge=0.01, le=0.99),
    high: float = Query(default=0.8, ge=0.01, le=0.99),
) -> Response:
    from zturbo.server.creator_control import preview_png

    return Response(preview_png(config.input_dir, image, kind, low, high), media_type="image/png")

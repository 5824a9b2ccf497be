"""Model loaders: pick a file from the models folder, hand it to the engine.

Their outputs are cached by the executor like any node's, which is what keeps models loaded between
prompts that use the same files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from zturbo.checkpoints.detect import TEXT_ENCODER, detect
from zturbo.checkpoints.reader import open_checkpoint
from zturbo.errors import InputError, ZTurboError
from zturbo.nodes.base import Node, require_engine
from zturbo.nodes.schema import Boolean, Combo, NodeSchema, Output

if TYPE_CHECKING:
    from pathlib import Path

    from zturbo.nodes.context import ExecutionContext, NodeContext

CLIP_TYPES = (
    "stable_diffusion",
    "stable_cascade",
    "sd3",
    "stable_audio",
    "mochi",
    "ltxv",
    "pixart",
    "cosmos",
    "lumina2",
    "wan",
    "hidream",
    "chroma",
    "ace",
    "omnigen2",
    "qwen_image",
    "hunyuan_image",
    "flux2",
    "ovis",
    "longcat_image",
    "cogvideox",
    "lens",
    "pixeldit",
    "ideogram4",
    "boogu",
    "krea2",
    "joyimage",
    "mage",
    "minimax",
)
DUAL_CLIP_TYPES = (
    "sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image", "hunyuan_video_15", "kandinsky5",
    "kandinsky5_image", "ltxv", "newbie", "ace",
)  # fmt: skip
GGUF_DTYPES = ("default", "target", "float32", "float16", "bfloat16")
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")
CLIP_DESCRIPTION = (
    "[Recipes]\n\nstable_diffusion: clip-l\nstable_cascade: clip-g\nsd3: t5 xxl/ clip-g / clip-l\n"
    "stable_audio: t5 base\nmochi: t5 xxl\ncosmos: old t5 xxl\nlumina2: gemma 2 2B\nwan: umt5 xxl\n"
    " hidream: llama-3.1 (Recommend) or t5\nomnigen2: qwen vl 2.5 3B"
)


def model_files(folder: str) -> Callable[[ExecutionContext | None], list[str]]:
    """Option source listing a model folder at request time (empty without a context)."""

    def options(ctx: ExecutionContext | None) -> list[str]:
        return ctx.list_models(folder) if ctx is not None else []

    return options


class UNETLoader(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="UNETLoader",
        display_name="Load Diffusion Model",
        category="model/loaders",
        inputs=(
            Combo("unet_name", model_files("diffusion_models")),
            Combo("weight_dtype", WEIGHT_DTYPES, advanced=True),
        ),
        outputs=(Output("MODEL"),),
    )

    def execute(self, ctx: NodeContext, unet_name: str, weight_dtype: str = "default") -> tuple[Any]:
        path = ctx.execution.resolve_model("diffusion_models", unet_name)
        return (require_engine(ctx).load_dit(path, weight_dtype),)


class CLIPLoader(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="CLIPLoader",
        display_name="Load CLIP",
        category="model/loaders",
        description=CLIP_DESCRIPTION,
        inputs=(
            Combo("clip_name", model_files("text_encoders")),
            Combo("type", CLIP_TYPES),
            Combo("device", ("default", "cpu"), optional=True, advanced=True),
        ),
        outputs=(Output("CLIP"),),
    )

    def execute(
        self,
        ctx: NodeContext,
        clip_name: str,
        type: str = "lumina2",
        device: str = "default",  # noqa: A002
    ) -> tuple[Any]:
        # `type` names the model family for ComfyUI; Z-Image's Qwen3 encoder is what we load whatever
        # it says ("lumina2" in the official templates), so the choice is accepted and not needed.
        path = ctx.execution.resolve_model("text_encoders", clip_name)
        return (require_engine(ctx).load_text_encoder(path, device),)


class VAELoader(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="VAELoader",
        display_name="Load VAE",
        category="model/loaders",
        inputs=(Combo("vae_name", model_files("vae")),),
        outputs=(Output("VAE"),),
    )

    def execute(self, ctx: NodeContext, vae_name: str) -> tuple[Any]:
        path = ctx.execution.resolve_model("vae", vae_name)
        return (require_engine(ctx).load_vae(path),)


DUAL_CLIP_DESCRIPTION = (
    "Recipes:\nsdxl: clip-l, clip-g\nsd3: clip-l, clip-g / clip-l, t5 / clip-g, t5\nflux: clip-l, t5\n"
    "hidream: at least one of t5 or llama, recommended t5 and llama\nhunyuan_image: qwen2.5vl 7b and byt5 "
    "small\nnewbie: gemma-3-4b-it, jina clip v2"
)


def _is_text_encoder(path: Path) -> bool:
    """Whether a file holds a Qwen3 text encoder (by its header, as every loader decides)."""
    try:
        return detect(open_checkpoint(path)).kind == TEXT_ENCODER
    except ZTurboError:
        return False


class DualCLIPLoader(Node):
    """ComfyUI's two-file text encoder loader. Z-Image has one text encoder, so of the two files the
    one that is a Qwen3 encoder is loaded and the other is ignored (zturbo runs no second encoder)."""

    schema: ClassVar[NodeSchema] = NodeSchema(
        name="DualCLIPLoader",
        display_name="Load CLIP (Dual)",
        category="model/loaders",
        description=DUAL_CLIP_DESCRIPTION,
        inputs=(
            Combo("clip_name1", model_files("text_encoders")),
            Combo("clip_name2", model_files("text_encoders")),
            Combo("type", DUAL_CLIP_TYPES),
            Combo("device", ("default", "cpu"), optional=True, advanced=True),
        ),
        outputs=(Output("CLIP"),),
    )

    def execute(
        self, ctx: NodeContext, clip_name1: str, clip_name2: str, type: str, device: str = "default",  # noqa: A002
    ) -> tuple[Any]:  # fmt: skip
        paths = [ctx.execution.resolve_model("text_encoders", n) for n in (clip_name1, clip_name2)]
        encoders = list(dict.fromkeys(p for p in paths if _is_text_encoder(p)))
        if len(encoders) != 1:
            found = "neither is" if not encoders else "both are"
            raise InputError(
                f"DualCLIPLoader: Z-Image uses one Qwen3 text encoder, and of {clip_name1!r} and "
                f"{clip_name2!r} {found}; use CLIPLoader with the Qwen3 encoder file"
            )
        return (require_engine(ctx).load_text_encoder(encoders[0], device),)


class CheckpointLoaderSimple(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="CheckpointLoaderSimple",
        display_name="Load Checkpoint",
        category="model/loaders",
        description="Loads a diffusion model checkpoint, diffusion models are used to denoise latents.",
        inputs=(
            Combo(
                "ckpt_name", model_files("checkpoints"), tooltip="The name of the checkpoint (model) to load."
            ),
        ),
        outputs=(
            Output("MODEL", tooltip="The model used for denoising latents."),
            Output("CLIP", tooltip="The CLIP model used for encoding text prompts."),
            Output(
                "VAE", tooltip="The VAE model used for encoding and decoding images to and from latent space."
            ),
        ),
    )

    def execute(self, ctx: NodeContext, ckpt_name: str) -> tuple[Any, Any, Any]:
        path = ctx.execution.resolve_model("checkpoints", ckpt_name)
        return require_engine(ctx).load_checkpoint(path)


# city96's ComfyUI-GGUF nodes: GGUF files already load through the core loaders, so these accept the
# names and inputs workflows carry and hand the file to the same engine loaders. The dequantisation and
# LoRA-patch dtypes are zturbo's own choice (its quantized layers), so those inputs are accepted and unused.
GGUF_MODULE = "custom_nodes.ComfyUI-GGUF"


def gguf_files(folder: str) -> Callable[[ExecutionContext | None], list[str]]:
    def options(ctx: ExecutionContext | None) -> list[str]:
        return [n for n in ctx.list_models(folder) if n.endswith(".gguf")] if ctx is not None else []

    return options


class UnetLoaderGGUF(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="UnetLoaderGGUF",
        display_name="Unet Loader (GGUF)",
        category="bootleg",
        python_module=GGUF_MODULE,
        inputs=(Combo("unet_name", gguf_files("diffusion_models")),),
        outputs=(Output("MODEL"),),
    )

    def execute(self, ctx: NodeContext, unet_name: str, **_unused: Any) -> tuple[Any]:
        path = ctx.execution.resolve_model("diffusion_models", unet_name)
        return (require_engine(ctx).load_dit(path, "default"),)


class UnetLoaderGGUFAdvanced(UnetLoaderGGUF):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="UnetLoaderGGUFAdvanced",
        display_name="Unet Loader (GGUF/Advanced)",
        category="bootleg",
        python_module=GGUF_MODULE,
        inputs=(
            Combo("unet_name", gguf_files("diffusion_models")),
            Combo("dequant_dtype", GGUF_DTYPES, default="default"),
            Combo("patch_dtype", GGUF_DTYPES, default="default"),
            Boolean("patch_on_device", default=False),
        ),
        outputs=(Output("MODEL"),),
    )


class CLIPLoaderGGUF(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="CLIPLoaderGGUF",
        display_name="CLIPLoader (GGUF)",
        category="bootleg",
        python_module=GGUF_MODULE,
        inputs=(Combo("clip_name", model_files("text_encoders")), Combo("type", CLIP_TYPES)),
        outputs=(Output("CLIP"),),
    )

    def execute(self, ctx: NodeContext, clip_name: str, type: str = "stable_diffusion") -> tuple[Any]:  # noqa: A002
        path = ctx.execution.resolve_model("text_encoders", clip_name)
        return (require_engine(ctx).load_text_encoder(path, "default"),)


NODES = (
    UNETLoader, CLIPLoader, VAELoader, DualCLIPLoader, CheckpointLoaderSimple, UnetLoaderGGUF,
    UnetLoaderGGUFAdvanced, CLIPLoaderGGUF,
)  # fmt: skip

"""The engine: request → plan → load → encode → sample → decode.

`Engine` holds loaded components (cached by file, so a server keeps models loaded between prompts)
and exposes the small set of operations both the CLI and the workflow nodes are built from; there is
one data path whatever the front end. It is configured by one `EngineSettings`.

Every component goes the same way: the memory plan decides its residence (once per workload change),
the file is read into the reference module (`checkpoints.load`), and `_realize_*` puts it in the form
and place that residence asks for (zturbo's DiT, compiled or graphed as the speed settings allow there;
blocks streamed or resident). A later plan (another workload, an out-of-memory fallback) calls the same
`_realize_*` again for the components whose residence changed.

NaN/inf watchdog: sampling is checked once after the last step (`ZImageDenoiser.check_finite`). A
non-finite result is not decoded into a black image: the DiT samples once more computing in fp32 from
its stored weights (`ZImageDiT.set_precision("fp32")`: bf16 or the fp16-safe path → fp32 arithmetic,
one layer expanded at a time, so no more weight memory), with a warning that says so. If that is
finite the DiT stays on fp32 arithmetic while it is loaded (what failed once fails again: fp16 on GPUs
where it is broken, say); if not, the precision is restored and the error names both tries. A VAE
decode with NaN/inf is redone in fp32 (and the VAE kept in fp32: 0.3 GB).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

if TYPE_CHECKING:
    pass

from zturbo import control, masks, sampling
from zturbo.checkpoints import load
from zturbo.checkpoints.detect import DIT, TEXT_ENCODER
from zturbo.checkpoints.layout import ModelPaths, tokenizer_dir
from zturbo.errors import GenerationError, NonFiniteError
from zturbo.lora.cache import DIT_PATCHES, TE_PATCHES, LoraCache
from zturbo.lora.report import LoraReport
from zturbo.models import prompt_enhancer
from zturbo.models import upscale as upscale_ops
from zturbo.models import vae as vae_ops
from zturbo.models.denoiser import CFGNorm, ZImageDenoiser, compute_description
from zturbo.models.preview import latent_preview
from zturbo.models.text_encoder import PromptEncoder
from zturbo.models.zimage_dit import ZImageDiT
from zturbo.patches import Patch, PatchSet, live
from zturbo.progress import ProgressFn
from zturbo.runtime import residency
from zturbo.runtime.compile import accelerate, accelerate_vae
from zturbo.runtime.graphs import GraphCache
from zturbo.runtime.memory import MemoryPlan, Residence, Workload
from zturbo.runtime.memory_manager import MemoryManager
from zturbo.runtime.settings import EngineSettings
from zturbo.runtime.sizes import ComponentSize
from zturbo.sampling.base import Denoiser
from zturbo.sampling.inpaint import InpaintDenoiser
from zturbo.sampling.noise import seeded_noise
from zturbo.sampling.samplers import DISCARD_PENULTIMATE_SIGMA, UNCOND_SAMPLERS
from zturbo.sampling.schedules import SCHEDULERS, get_sigmas
from zturbo.sampling.variety import SeedVariety

log = logging.getLogger(__name__)
T = TypeVar("T")
UNPLANNED_VAE_TILE_PIXELS = 2 * 1024 * 1024


@dataclass(frozen=True)
class ZImageModel:
    """MODEL: the loaded transformer plus its sampling settings (ModelSamplingAuraFlow sets these)."""

    component: load.LoadedComponent
    shift: float = 3.0
    multiplier: float = 1.0
    patches: PatchSet = PatchSet()  # LoRAs and the like, applied right before sampling
    cfg_norms: tuple[CFGNorm, ...] = ()  # CFGNorm patches, in the order they were applied
    controls: tuple = ()  # ControlNets applied to this MODEL (zturbo.control.ControlApplication)
    variety: SeedVariety | None = None  # seed variety (zturbo.sampling.variety); None: off

    @property
    def transformer(self) -> torch.nn.Module:
        return self.component.module


@dataclass(frozen=True)
class TextEncoder:
    """CLIP: prompt encoder plus where it came from."""

    component: load.LoadedComponent
    encoder: PromptEncoder
    patches: PatchSet = PatchSet()  # text-encoder LoRAs, applied right before encoding


@dataclass(frozen=True)
class VAE:
    component: load.LoadedComponent

    @property
    def module(self) -> torch.nn.Module:
        return self.component.module


@dataclass(frozen=True)
class Conditioning:
    """CONDITIONING: caption features, one (tokens, dim) tensor per prompt."""

    embeds: list[torch.Tensor]


@dataclass
class Engine:
    """Loads components on demand and runs the model operations."""

    settings: EngineSettings = field(default_factory=EngineSettings)
    tokenizer: Path | None = None
    _cache: dict[tuple, object] = field(default_factory=dict, repr=False)
    _loras: LoraCache = field(default_factory=LoraCache, repr=False)
    _patch_sizes: dict[Path, ComponentSize] = field(default_factory=dict, repr=False)  # loaded ControlNets' sizes
    # Context parallel (zturbo.parallel): wraps each DiT it realises (given the module and what it was
    # loaded from), and refuses, before each sampling, a MODEL the split forward does not run.
    dit_wrapper: Callable[[torch.nn.Module, load.LoadedComponent], torch.nn.Module] | None = field(
        default=None, repr=False
    )
    dit_check: Callable[[ZImageModel], None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.placement = self.settings.placement
        log.info("dtypes: %s", self.placement.describe())
        self.speed = self.settings.speed_options  # which DiT runs, compiled or not
        # VRAM plan, streaming and the out-of-memory retry; None: every component resident (no planning).
        self.memory: MemoryManager | None = None
        if self.settings.plans_memory:
            vram = None if self.settings.plan is not None else self.settings.vram
            self.memory = MemoryManager(self.placement, vram=vram, plan=self.settings.plan)

    # --- loading (cached by path and options) ---

    def _cached(self, key: tuple, build: Callable[[], object]) -> object:
        if key not in self._cache:
            started = time.perf_counter()
            self._cache[key] = build()
            log.info("loaded %s in %.1fs", key[1], time.perf_counter() - started)
        return self._cache[key]

    def load_dit(self, path: Path, weight_dtype: str = "default") -> ZImageModel:
        dtype = self.placement.dit_dtype(weight_dtype)

        def build() -> ZImageModel:
            residence = self._residence(DIT, path, weight_dtype)
            component = load.load_dit(
                path,
                dtype=dtype,
                device=self._home(residence),
                weight_dtype=weight_dtype,
                work_device=self.placement.device,
            )
            component.runtime["weight_dtype"] = weight_dtype  # what context parallel's followers load
            self._track(DIT, component, self._realize_dit)
            return ZImageModel(component)

        key = ("dit", path, weight_dtype)
        return self._guarded(lambda: self._cached(key, build), "loading the diffusion model")  # type: ignore[return-value]

    def load_text_encoder(self, path: Path, device: str = "default") -> TextEncoder:
        target = torch.device("cpu") if device == "cpu" else self.placement.device
        dtype = self.placement.text_encoder_dtype(target)

        def build() -> TextEncoder:
            planned = device != "cpu"  # CLIPLoader's device "cpu" keeps the encoder out of the plan
            residence = self._residence(TEXT_ENCODER, path) if planned else Residence()
            home = self._home(residence) if planned else target
            component = load.load_text_encoder(path, dtype=dtype, device=home)
            if planned:
                self._track(TEXT_ENCODER, component, self._realize_text_encoder)
            tok = self.tokenizer or tokenizer_dir(path.parent if path.name == "text_encoder" else None)
            encoder = PromptEncoder(component.module, tok)
            if self.speed.mode != "reference":  # replayed only while the encoder is resident on CUDA
                encoder.graphs = GraphCache(encoder.features, "text encoder")
            return TextEncoder(component, encoder)

        key = ("text_encoder", path, device)
        return self._guarded(lambda: self._cached(key, build), "loading the text encoder")  # type: ignore[return-value]

    def _residence(self, kind: str, path: Path, weight_dtype: str = "default") -> Residence:
        """The plan's decision for this file (its header read once; a new plan only if sizes changed)."""
        if self.memory is None:
            return Residence()
        self.memory.measure(kind, path, weight_dtype)
        self.memory.replan()
        return self.memory.residence(kind)

    def _home(self, residence: Residence) -> torch.device:
        """Where a component's weights load: host RAM when they stream, else the device."""
        return torch.device("cpu") if residence.streamed else self.placement.device

    def _track(
        self,
        kind: str,
        component: load.LoadedComponent | control.ControlNetPatch,
        realize: Callable[[Any, Residence], None],
    ) -> None:
        """Realise the current residence for a loaded component (or a ControlNet, which lives where the
        DiT lives), and again whenever the plan changes."""
        if self.memory is not None:
            self.memory.register(kind, component, realize)
        else:
            realize(component, Residence())

    def _realize_dit(self, component: load.LoadedComponent, residence: Residence) -> None:
        """Convert (zturbo's DiT, compiled/graphed as `residence` allows) and place, in one step."""
        module = accelerate(component.module, self.speed.within(residence))
        residency.place_dit(module, residence, self.placement.device)
        if self.dit_wrapper is not None:  # --gpus/--cp G: rank 0's DiT drives the others (zturbo.parallel)
            module = self.dit_wrapper(module, component)
        component.module = module

    def _realize_text_encoder(self, component: load.LoadedComponent, residence: Residence) -> None:
        residency.place_text_encoder(component.module, residence, self.placement.device)

    # --- weight patches (LoRA): carried by MODEL/CLIP values, applied right before each run ---

    def load_lora(
        self,
        model: ZImageModel,
        clip: TextEncoder | None,
        path: Path,
        strength_model: float = 1.0,
        strength_clip: float = 1.0,
        on_report: Callable[[LoraReport], None] | None = None,
    ) -> tuple[ZImageModel, TextEncoder | None]:
        """`model` and `clip` with the LoRA file's patches added (nothing computed yet: ComfyUI's
        LoraLoader). The file is read once (cached while unchanged) and checked against the shapes of
        the loaded models; what it could not match is in its report, logged here and given to
        `on_report` (the server's job messages)."""
        te_shapes = live.reference_shapes(clip.component.module) if clip is not None else None
        lora = self._loras.read(path, live.reference_shapes(model.component.module), te_shapes)
        if on_report is not None:
            on_report(lora.report)

        def added(component: str, strength: float) -> list[Patch]:
            return [Patch(p, strength, path.name) for p in lora.patches if p.component == component]

        model = dataclasses.replace(model, patches=model.patches.plus(added(DIT_PATCHES, strength_model)))
        if clip is not None:
            clip = dataclasses.replace(clip, patches=clip.patches.plus(added(TE_PATCHES, strength_clip)))
        return model, clip

    def _sync_dit(self, model: ZImageModel) -> None:
        synced = live.sync(model.component, model.patches, self.placement.device)
        if synced.structure:  # side paths added or removed: realise again (fresh CUDA graphs)
            residence = self.memory.residence(DIT) if self.memory is not None else Residence()
            self._realize_dit(model.component, residence)
        elif synced.weights:
            residency.weights_changed(model.component.module)

    def _sync_text_encoder(self, clip: TextEncoder) -> None:
        synced = live.sync(clip.component, clip.patches, self.placement.device)
        if synced.weights:
            residency.weights_changed(clip.component.module)
        if synced.structure and clip.encoder.graphs is not None:
            clip.encoder.graphs = GraphCache(clip.encoder.features, "text encoder")

    def prepare(
        self, paths: ModelPaths, workload: Workload, weight_dtype: str | None = None
    ) -> MemoryPlan | None:
        """Plan memory for these files and this job before loading anything (None without planning).
        Asked again for the same files and workload, it returns the same plan without recomputing it."""
        if self.memory is None:
            return None
        return self.memory.prepare(paths, workload, weight_dtype or self.settings.weight_dtype)

    def _guarded(self, op: Callable[[], T], what: str) -> T:
        return op() if self.memory is None else self.memory.guard(op, what)

    def load_vae(self, path: Path) -> VAE:
        dtype = self.placement.vae_dtype()

        def build() -> VAE:
            component = load.load_vae(path, dtype=dtype, device=self.placement.device)
            accelerate_vae(component.module, self.speed)
            return VAE(component)

        return self._cached(("vae", path), build)  # type: ignore[return-value]

    def load_all(
        self, paths: ModelPaths, weight_dtype: str = "default"
    ) -> tuple[ZImageModel, TextEncoder, VAE]:
        self.tokenizer = self.tokenizer or paths.tokenizer
        return (
            self.load_dit(paths.dit, weight_dtype),
            self.load_text_encoder(paths.text_encoder),
            self.load_vae(paths.vae),
        )

    def load_checkpoint(self, path: Path) -> tuple[ZImageModel, TextEncoder, VAE]:
        """CheckpointLoaderSimple: the three components of one single-file checkpoint (each loader
        reads its own part of the file, found by ComfyUI's key prefixes)."""
        return self.load_dit(path), self.load_text_encoder(path), self.load_vae(path)

    def free(self, unload_models: bool = True) -> None:
        """ComfyUI's /free: drop the loaded models (when asked) and return cached GPU memory."""
        if unload_models:
            self._cache.clear()
            self._patch_sizes.clear()
            if self.memory is not None:
                self.memory.set_patch_size(None)
        self.placement.empty_cache()

    # --- operations (the workflow nodes call exactly these) ---

    def encode_text(self, clip: TextEncoder, text: str) -> Conditioning:
        def encode() -> Conditioning:
            self._sync_text_encoder(clip)
            with residency.text_encoder_ready(clip.component.module, self.placement.device):
                return Conditioning(clip.encoder.encode([text]))

        cond = self._guarded(encode, "encoding the prompt")
        if clip.component.dtype == torch.float16 and not all(bool(torch.isfinite(e).all()) for e in cond.embeds):
            raise GenerationError(  # fp16 only where bf16 cannot run at all (MPS before macOS 14)
                "the text encoder produced NaN/inf values for this prompt computing in fp16 (this device has "
                "no bf16); try --dtype fp32, or a shorter or different prompt"
            )
        return cond

    def enhance_prompt(
        self,
        clip: TextEncoder,
        text: str,
        *,
        seed: int = 0,
        max_tokens: int = prompt_enhancer.DEFAULT_MAX_NEW_TOKENS,
        system: str | None = None,
        on_token: Callable[[str], None] | None = None,
    ) -> str:
        """A short idea rewritten as a detailed description by the loaded text encoder, as a causal LM
        (`zturbo.models.prompt_enhancer`). A resident encoder prefills and decodes on its device; a
        streamed one (small-GPU plans) prefills once through its GPU slots, like an encode, and decodes
        on the CPU from its host copy, so no layer crosses the bus per token. `system` None: our
        default system prompt; `on_token` gets the text as it is generated."""
        prompt_enhancer.check_request(text, max_tokens)

        def run() -> str:
            self._sync_text_encoder(clip)  # its LoRA patches, as for an encode
            module = clip.component.module
            enhancer = prompt_enhancer.PromptEnhancer(module, clip.encoder.tokenizer, self._decode_graphs())
            ids = enhancer.prompt_ids(text, system)
            with residency.text_encoder_ready(module, self.placement.device):
                state = enhancer.prefill(ids, residency.text_encoder_device(module, self.placement.device))
            with residency.text_encoder_on_host(module) as device:
                enhanced, _ = enhancer.decode(
                    state, device, seed=seed, max_new_tokens=max_tokens, on_token=on_token
                )
            return enhanced

        return self._guarded(run, "enhancing the prompt")

    def _decode_graphs(self) -> Callable[[Any], Any] | None:
        """The enhancer's decode step as a CUDA graph (outside the reference mode, as the encoder's)."""
        if self.speed.mode == "reference":
            return None
        return lambda step: GraphCache(step, "prompt enhancer's decode step")

    # --- ControlNets (model patches) ---

    def load_controlnet(self, path: Path) -> control.ControlNetPatch:
        """MODEL_PATCH: a Z-Image Fun ControlNet file or folder (cached; planned and placed like the DiT)."""

        def build() -> control.ControlNetPatch:
            from zturbo.checkpoints.controlnet import load_controlnet

            dtype = self.placement.dit_dtype()
            streamed = self.memory is not None and self._plan_patch(path, dtype).streamed
            device = torch.device("cpu") if streamed else self.placement.device
            module, info = load_controlnet(path, dtype=dtype, device=device)
            patch = control.ControlNetPatch(module, info.spec, path, info.description, dtype)
            self._track(DIT, patch, self._realize_controlnet)  # it lives where the DiT lives
            return patch

        return self._guarded(lambda: self._cached(("controlnet", path), build), "loading the ControlNet")  # type: ignore[return-value]

    def _plan_patch(self, path: Path, dtype: torch.dtype) -> Residence:
        assert self.memory is not None
        self._patch_sizes[path] = control.measure(path, dtype)
        self.memory.set_patch_size(control.combined(list(self._patch_sizes.values())))
        return self.memory.residence(DIT)

    def _realize_controlnet(self, patch: control.ControlNetPatch, residence: Residence) -> None:
        control.realize(patch, residence, mode=self.speed.mode, device=self.placement.device)

    def apply_controlnet(
        self,
        model: ZImageModel,
        patch: control.ControlNetPatch,
        vae: VAE,
        strength: float,
        image: torch.Tensor | None = None,
        inpaint_image: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        refiner_to_base: bool = True,
    ) -> ZImageModel:
        """A new MODEL with this ControlNet added (ZImageFunControlnet); the input MODEL is unchanged."""
        app = control.ControlApplication(patch, vae, strength, image, inpaint_image, mask, refiner_to_base)
        dit: Any = getattr(model.transformer, "dit", model.transformer)  # zturbo's DiT, or its graph wrapper
        width = dit.x_pad_token.shape[-1]
        control.check_application(app, width, len(dit.layers), model.component.source)
        return dataclasses.replace(model, controls=(*model.controls, app))

    def zero_conditioning(self, cond: Conditioning) -> Conditioning:
        return Conditioning([torch.zeros_like(e) for e in cond.embeds])

    def with_shift(self, model: ZImageModel, shift: float, multiplier: float = 1.0) -> ZImageModel:
        return dataclasses.replace(model, shift=shift, multiplier=multiplier)

    def sampler_names(self) -> list[str]:
        return list(sampling.SAMPLERS)

    def scheduler_names(self) -> list[str]:
        return list(SCHEDULERS)

    def sample(
        self,
        model: ZImageModel,
        positive: Conditioning,
        negative: Conditioning | None,
        latent: torch.Tensor,
        *,
        seed: int,
        steps: int,
        cfg: float,
        sampler_name: str,
        scheduler: str,
        denoise: float = 1.0,
        add_noise: bool = True,
        start_step: int | None = None,
        end_step: int | None = None,
        return_with_leftover_noise: bool = False,
        progress: ProgressFn | None = None,
        preview: bool = False,
        noise_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Raw VAE-space latent in, raw VAE-space latent out (ComfyUI's LATENT convention).

        `noise_mask` (a LATENT's "noise_mask", pixel or latent sized; 1 = repaint) confines the changes
        to the masked area, as ComfyUI's KSamplerX0Inpaint does (`sampling.inpaint`).

        `progress(step, total, image)` is called after each step; `image` is a latent preview when
        `preview` is set (a cheap projection, see models/preview.py), else None.
        """
        sigmas = get_sigmas(
            scheduler,
            steps,
            shift=model.shift,
            denoise=denoise,
            multiplier=model.multiplier,
            discard_penultimate=sampler_name in DISCARD_PENULTIMATE_SIGMA,
        )
        sigmas = _slice_sigmas(
            sigmas, start_step, end_step, force_full_denoise=not return_with_leftover_noise
        )
        latent = latent.float()
        if len(sigmas) <= 1:
            return latent
        noise = seeded_noise(tuple(latent.shape), seed) if add_noise else torch.zeros_like(latent)
        out, _ = self._sample_core(
            model, positive, negative, latent, noise, sigmas, cfg=cfg, sampler_name=sampler_name,
            seed=seed, progress=progress, preview=preview, noise_mask=noise_mask,
        )  # fmt: skip
        return out

    def sigmas(self, model: ZImageModel, scheduler: str, steps: int, denoise: float = 1.0) -> torch.Tensor:
        """BasicScheduler: the model's schedule for `steps` (denoise < 1 keeps the last steps+1 of
        int(steps/denoise)); float32 on the CPU, empty for denoise 0."""
        return get_sigmas(scheduler, steps, shift=model.shift, denoise=denoise, multiplier=model.multiplier)

    def sample_sigmas(
        self,
        model: ZImageModel,
        positive: Conditioning,
        negative: Conditioning | None,
        latent: torch.Tensor,
        *,
        sigmas: torch.Tensor,
        cfg: float,
        sampler_name: str,
        seed: int,
        add_noise: bool = True,
        batch_index: list[int] | None = None,
        progress: ProgressFn | None = None,
        preview: bool = False,
        noise_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """SamplerCustom(Advanced): sample over explicit `sigmas` (the guider's cfg and prompts).

        Returns the latents and the last step's denoised estimate (None if no step ran), both raw
        VAE space. Empty `sigmas` give the latent back unchanged, as ComfyUI's guider does. The
        noise is ComfyUI's `prepare_noise`, per `batch_index` when the latent has one.
        """
        latent = latent.float()
        if sigmas.numel() == 0:
            return latent, None
        noise = start_noise(tuple(latent.shape), seed, batch_index) if add_noise else torch.zeros_like(latent)
        return self._sample_core(
            model, positive, negative, latent, noise, sigmas.float().cpu(), cfg=cfg, sampler_name=sampler_name,
            seed=seed, progress=progress, preview=preview, noise_mask=noise_mask,
        )  # fmt: skip

    def with_cfg_norm(self, model: ZImageModel, strength: float, pre_cfg: bool = False) -> ZImageModel:
        """CFGNorm: a MODEL whose guided estimate is norm-limited (see `models.denoiser.CFGNorm`)."""
        return dataclasses.replace(model, cfg_norms=(*model.cfg_norms, CFGNorm(strength, pre_cfg)))

    def with_variety(self, model: ZImageModel, strength: float, fraction: float = 0.3) -> ZImageModel:
        """ZTurboSeedVariety: a MODEL whose first steps see the prompt perturbed by seeded noise
        (`sampling.variety`); strength 0 gives the MODEL back unchanged."""
        variety = SeedVariety(strength, fraction)  # validated either way
        return dataclasses.replace(model, variety=variety if strength > 0 else None)

    def _sample_core(
        self,
        model: ZImageModel,
        positive: Conditioning,
        negative: Conditioning | None,
        latent: torch.Tensor,
        noise: torch.Tensor,
        sigmas: torch.Tensor,
        *,
        cfg: float,
        sampler_name: str,
        seed: int,
        progress: ProgressFn | None,
        preview: bool,
        noise_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What both sampling operations share: latent format in/out, the denoiser (with the weight
        patches synced and the inpaint mask applied), the memory plan's workload and out-of-memory
        retry. Returns (latents, last denoised estimate or None)."""
        if noise_mask is not None:  # before any work: a mask of another shape would be stretched
            masks.check_shape(
                noise_mask, latent.shape[-1] * 8, latent.shape[-2] * 8,
                "the latent's noise mask (SetLatentNoiseMask / InpaintModelConditioning)", "its image",
            )  # fmt: skip
        # ComfyUI leaves an all-zero (empty) latent as is instead of normalising it.
        x0 = vae_ops.process_in(latent) if bool(latent.any()) else latent
        device = self.placement.device
        # ComfyUI's CFG++ samplers read the negative prompt's estimate even at cfg 1
        uncond_at_cfg1 = sampler_name in UNCOND_SAMPLERS and negative is not None
        last: list[torch.Tensor] = []

        def callback(step: int, total: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
            last[:] = [denoised]
            if progress is not None:
                progress(step + 1, total, latent_preview(denoised) if preview else None)

        if self.memory is not None:
            batch, _, h, w = latent.shape
            self.memory.set_workload(Workload(w * 8, h * 8, batch, cfg, uncond_at_cfg1=uncond_at_cfg1))

        if self.dit_check is not None:  # before any weight is patched
            self.dit_check(model)

        def run() -> torch.Tensor:  # a fresh denoiser per try: the OOM retry starts over
            self._sync_dit(model)
            denoiser = self._denoiser(model, positive, negative, latent, sigmas, cfg, uncond_at_cfg1, seed)
            model_fn: Denoiser = denoiser
            if noise_mask is not None:
                mask = masks.to_latent(noise_mask, x0.shape).to(device)
                model_fn = InpaintDenoiser(denoiser, mask, x0.to(device), noise.to(device))
            out = sampling.sample(
                sampler_name,
                model_fn,
                noise.to(device),
                x0.to(device),
                sigmas,
                seed=seed,
                callback=callback,
                shift=model.shift,
            )
            denoiser.check_finite()
            if denoiser.step_cache is not None:
                log.info("step cache: skipped %d of %d model calls", denoiser.skipped_calls, denoiser.calls)
            return out

        out = self._guarded(lambda: self._watched(model, run), "sampling")
        denoised = vae_ops.process_out(last[0].float()).cpu() if last else None
        return vae_ops.process_out(out.float()).cpu(), denoised

    def _denoiser(
        self,
        model: ZImageModel,
        positive: Conditioning,
        negative: Conditioning | None,
        latent: torch.Tensor,
        sigmas: torch.Tensor,
        cfg: float,
        uncond_at_cfg1: bool,
        seed: int,
    ) -> ZImageDenoiser:
        """The MODEL's denoiser for one sampling: its ControlNets' inputs for this latent size, CFG, the
        step cache (0: off; else a fresh cache for this run only), variety and CFG norms."""
        h, w = latent.shape[-2:]
        controls = control.control_inputs(self, model.controls, h, w) if model.controls else None
        return ZImageDenoiser(
            model.transformer,
            positive.embeds,
            negative.embeds if negative else None,
            cfg,
            model.multiplier,
            step_cache=self.speed.step_cache,
            sigmas=sigmas,
            uncond_at_cfg1=uncond_at_cfg1,
            cfg_norms=model.cfg_norms,
            controls=controls,
            variety=model.variety,
            seed=seed,
        )

    # --- the NaN/inf watchdog (module docstring) ---

    def _watched(self, model: ZImageModel, run: Callable[[], T]) -> T:
        """`run` (one whole sampling); on NaN/inf once more with the DiT computing in fp32."""
        try:
            return run()
        except NonFiniteError as exc:
            dit = _zturbo_dit(model.transformer)
            if dit is None or not _has_safer_path(dit):
                hint = "the weights or inputs hold NaN/inf (a LoRA at too high a strength? a damaged file?)"
                raise NonFiniteError(f"{exc}: nothing computes more precisely than that; {hint}") from exc
            before, first = dit.precision, compute_description(dit)
            log.warning(
                "%s; retrying once computing in fp32 (the weights stay as stored, each layer is expanded to "
                "fp32 as it runs: slower, no more weight memory)",
                exc,
            )
        self._set_dit_precision(model, "fp32")
        try:
            out = run()
        except NonFiniteError as exc:
            self._set_dit_precision(model, before)
            raise NonFiniteError(
                f"{exc}, as it did computing in {first}: the weights or inputs hold NaN/inf "
                "(a LoRA at too high a strength? a damaged file?)"
            ) from exc
        except BaseException:
            self._set_dit_precision(model, before)
            raise
        log.warning(
            "computing in fp32 gave a finite result; the diffusion model stays on fp32 arithmetic while it "
            "is loaded (use --dtype fp32 to start there)"
        )
        return out

    def _set_dit_precision(self, model: ZImageModel, precision: str) -> None:
        """Switch the loaded DiT's arithmetic; its CUDA graphs are captured again, plans re-counted."""
        dit = _zturbo_dit(model.transformer)
        assert dit is not None
        dit.set_precision(precision)
        residence = self.memory.residence(DIT) if self.memory is not None else Residence()
        self._realize_dit(model.component, residence)
        if self.memory is not None:
            self.memory.set_dit_compute("fp32" if precision == "fp32" else None)

    def decode(self, vae: VAE, latent: torch.Tensor, tile: tuple[int, int] | None = None) -> torch.Tensor:
        """`tile` = (tile, overlap) pixels forces tiling (VAEDecodeTiled); else the memory plan decides;
        a non-finite decode in bf16/fp16 is redone in fp32 (the watchdog)."""
        def run() -> torch.Tensor:
            with self._vae_tiles(vae, tile, latent.shape[-1] * latent.shape[-2] * 64):
                return vae_ops.decode(vae.module, latent).cpu()

        try:
            return self._guarded(run, "decoding the image")
        except NonFiniteError as exc:
            if next(vae.module.parameters()).dtype == torch.float32:
                raise GenerationError(f"{exc}: the latent holds NaN/inf, or the VAE file is damaged") from exc
            log.warning("%s; decoding again in fp32 (the VAE stays in fp32: 0.3 GB more)", exc)
        vae.module.float()
        vae.component.dtype = torch.float32
        return self._guarded(run, "decoding the image")

    def encode(self, vae: VAE, image: torch.Tensor, tile: tuple[int, int] | None = None) -> torch.Tensor:
        """`tile` = (tile, overlap) pixels forces tiling (VAEEncodeTiled); else the memory plan decides."""
        def run() -> torch.Tensor:
            with self._vae_tiles(vae, tile, image.shape[1] * image.shape[2]):
                return vae_ops.encode(vae.module, image).cpu()

        return self._guarded(run, "encoding the image")

    def _vae_tiles(self, vae: VAE, tile: tuple[int, int] | None, pixels: int = 0):
        """Forced tiles; else the memory plan's choice; without a plan (CPU), tiles above 2 megapixels,
        where the untiled VAE's mid-block attention alone would need gigabytes (and minutes)."""
        if tile is not None:
            return residency.vae_tiling(vae.module, True, tile[0], tile[1])
        if self.memory is None:
            return residency.vae_tiling(vae.module, pixels > UNPLANNED_VAE_TILE_PIXELS)
        return residency.vae_tiling(vae.module, self.memory.vae_tiled())


    # --- upscale models (UpscaleModelLoader, ImageUpscaleWithModel) ---

    def load_upscale_model(self, path: Path) -> upscale_ops.UpscaleModel:
        build = lambda: upscale_ops.load_upscale_model(path, self.placement.device)  # noqa: E731
        return self._cached(("upscale_model", path), build)  # type: ignore[return-value]

    def upscale(
        self, model: upscale_ops.UpscaleModel, image: torch.Tensor, progress: ProgressFn | None = None
    ) -> torch.Tensor:
        """IMAGE → IMAGE × the model's scale, in tiles (smaller ones under a tiled-VAE memory plan); on
        running out of GPU memory the tiles are halved, down to 64 pixels, as ComfyUI does."""
        small = self.memory is not None and self.memory.vae_tiled()
        tile = upscale_ops.UPSCALE_TILE // 2 if small else upscale_ops.UPSCALE_TILE
        overlap = upscale_ops.UPSCALE_OVERLAP
        report = (lambda done, total: progress(done, total, None)) if progress is not None else None
        while True:
            try:
                return upscale_ops.upscale_image(model, image, tile, overlap, report)
            except torch.cuda.OutOfMemoryError:
                self.placement.empty_cache()
                if tile // 2 < upscale_ops.MIN_TILE:
                    raise
                tile, overlap = tile // 2, max(4, overlap // 2)
                log.warning("upscale: out of GPU memory, retrying with %d-pixel tiles", tile)

def start_noise(shape: tuple[int, ...], seed: int, batch_index: list[int] | None = None) -> torch.Tensor:
    """ComfyUI's `prepare_noise`: the whole batch from one seeded CPU generator, or, for a latent that
    carries `batch_index` (LatentFromBatch, RepeatLatentBatch), one draw per index up to the largest,
    keeping the indexed ones, so a picked image gets the noise it had in the full batch."""
    if batch_index is None:
        return seeded_noise(shape, seed)
    generator = torch.Generator("cpu").manual_seed(seed)
    draws = [
        torch.randn((1, *shape[1:]), dtype=torch.float32, generator=generator)
        for _ in range(max(batch_index) + 1)
    ]
    return torch.cat([draws[i] for i in batch_index])


def _zturbo_dit(module: torch.nn.Module) -> ZImageDiT | None:
    """zturbo's DiT inside a loaded transformer (itself, or a GraphedDiT's), None for diffusers' class."""
    dit = getattr(module, "dit", module)
    return dit if isinstance(dit, ZImageDiT) else None


def _has_safer_path(dit: ZImageDiT) -> bool:
    """fp32 arithmetic is safer unless the DiT already computes in fp32."""
    return dit.precision != "fp32" and dit.settings.t_dtype != torch.float32


def _slice_sigmas(
    sigmas: torch.Tensor, start: int | None, end: int | None, *, force_full_denoise: bool
) -> torch.Tensor:
    """KSamplerAdvanced's start/end steps, as ComfyUI applies them."""
    if end is not None and end < len(sigmas) - 1:
        sigmas = sigmas[: end + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start is not None:
        if start >= len(sigmas) - 1:
            return sigmas[-1:]
        sigmas = sigmas[start:]
    return sigmas

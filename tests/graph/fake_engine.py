"""TEST DOUBLE: a tiny deterministic stand-in for the model engine (no weights, CPU, milliseconds).

It follows `zturbo.nodes.engine_api.EngineAPI` closely enough for the graph executor's tests: loads
are counted, conditioning is a dict, sampling is a seeded function of its inputs that reports
progress every step, decoding is a fixed projection. It says nothing about image quality.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812


class FakeEngine:
    def __init__(self, fail_sampling: bool = False) -> None:
        self.loads: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.fail_sampling = fail_sampling

    def load_dit(self, path: Path, weight_dtype: str) -> dict[str, Any]:
        self.loads["dit"] += 1
        return {"kind": "dit", "name": Path(path).name, "dtype": weight_dtype, "shift": None}

    def load_text_encoder(self, path: Path, device: str) -> dict[str, Any]:
        self.loads["text_encoder"] += 1
        return {"kind": "te", "name": Path(path).name, "device": device}

    def load_vae(self, path: Path) -> dict[str, Any]:
        self.loads["vae"] += 1
        return {"kind": "vae", "name": Path(path).name}

    def encode_text(self, clip: Any, text: str) -> dict[str, Any]:
        self.calls["encode_text"] += 1
        return {"text": text, "scale": float(len(text) % 7 + 1)}

    def zero_conditioning(self, cond: dict[str, Any]) -> dict[str, Any]:
        return {**cond, "scale": 0.0}

    def with_shift(self, model: dict[str, Any], shift: float, multiplier: float) -> dict[str, Any]:
        return {**model, "shift": shift, "multiplier": multiplier}

    def sample(
        self,
        model: Any,
        positive: Any,
        negative: Any,
        latent: torch.Tensor,
        *,
        seed: int,
        steps: int,
        cfg: float,
        sampler_name: str,
        scheduler: str,
        denoise: float,
        add_noise: bool = True,
        start_step: int | None = None,
        end_step: int | None = None,
        return_with_leftover_noise: bool = False,
        progress: Any,
        preview: bool = False,
        noise_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self.calls["sample"] += 1
        if self.fail_sampling:
            raise RuntimeError("fake sampler exploded")
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(latent.shape, generator=generator) if add_noise else latent.clone()
        for step in range(steps):
            x = x * 0.9 + latent * 0.1 + positive["scale"] * 0.01
            progress(step + 1, steps, None)
        return x

    def decode(self, vae: Any, latent: torch.Tensor) -> torch.Tensor:
        self.calls["decode"] += 1
        rgb = torch.sigmoid(latent[:, :3])
        return F.interpolate(rgb, scale_factor=8, mode="nearest").movedim(1, -1)

    def encode(self, vae: Any, image: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(image.movedim(-1, 1), 8)
        return torch.cat([pooled, torch.zeros(pooled.shape[0], 13, *pooled.shape[2:])], dim=1)

    def sampler_names(self) -> list[str]:
        return ["euler", "res_multistep"]

    def scheduler_names(self) -> list[str]:
        return ["simple", "normal"]

    def sigmas(self, model: Any, scheduler: str, steps: int, denoise: float) -> torch.Tensor:
        self.calls["sigmas"] += 1
        return torch.linspace(1.0, 0.0, steps + 1)

    def sample_sigmas(
        self,
        model: Any,
        positive: Any,
        negative: Any,
        latent: torch.Tensor,
        *,
        sigmas: torch.Tensor,
        cfg: float,
        sampler_name: str,
        seed: int,
        add_noise: bool = True,
        batch_index: list[int] | None = None,
        progress: Any,
        preview: bool = False,
        noise_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        steps = len(sigmas) - 1
        out = self.sample(
            model, positive, negative, latent, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name,
            scheduler="simple", denoise=1.0, add_noise=add_noise, progress=progress,
        )  # fmt: skip
        return out, (out * 0.5 if steps > 0 else None)

    def with_cfg_norm(self, model: dict[str, Any], strength: float, pre_cfg: bool) -> dict[str, Any]:
        return {**model, "cfg_norm": (strength, pre_cfg)}

    def load_lora(
        self, model: dict[str, Any], clip: Any, path: Path, strength_model: float, strength_clip: float,
        on_report: Any = None,
    ) -> tuple[dict[str, Any], Any]:
        self.loads["lora"] += 1
        return {**model, "lora": (path.name, strength_model)}, clip

    def load_checkpoint(self, path: Path) -> tuple[Any, Any, Any]:
        self.loads["checkpoint"] += 1
        return self.load_dit(path, "default"), self.load_text_encoder(path, "default"), self.load_vae(path)

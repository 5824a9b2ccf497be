"""Model configurations, inferred from tensor shapes.

Single files (ComfyUI, GGUF) carry no config, so — as ComfyUI does — dims, layer counts and heads are
read off the weights. The same code therefore loads the full-size model and the tiny random models the
tests build. Shapes are given under the reference classes' (diffusers / transformers) parameter names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from zturbo.errors import ZTurboError

Shapes = Mapping[str, tuple[int, ...]]



class ConfigError(ZTurboError):
    """The weights do not fit the architecture we know."""


def count_indexed(shapes: Mapping[str, object], prefix: str) -> int:
    """Number of distinct `prefix.N.` blocks, e.g. count_indexed(shapes, "layers") == 30."""
    rx = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    found = {int(m.group(1)) for k in shapes if (m := rx.match(k))}
    if found and found != set(range(len(found))):
        raise ConfigError(f"blocks {prefix}.N are not numbered 0..{len(found) - 1}: {sorted(found)[:10]}")
    return len(found)


def _shape(shapes: Shapes, key: str) -> tuple[int, ...]:
    try:
        return tuple(shapes[key])
    except KeyError:
        raise ConfigError(f"tensor {key!r} is missing") from None


def rope_axes_dims(head_dim: int) -> list[int]:
    """Split a head's rotary dims over (frame, height, width) axes.

    The released model uses [32, 48, 48] for head_dim 128; other sizes (tiny test models) keep the same
    1/4, 3/8, 3/8 proportions, rounded to even numbers so each axis holds whole complex pairs.
    """
    first = (head_dim // 4) // 2 * 2
    second = ((head_dim - first) // 2) // 2 * 2
    return [first, second, head_dim - first - second]


@dataclass(frozen=True)
class DiTConfig:
    """ZImageTransformer2DModel arguments (diffusers names). Defaults are the released Turbo's."""

    in_channels: int = 16
    dim: int = 3840
    n_layers: int = 30
    n_refiner_layers: int = 2
    n_heads: int = 30
    n_kv_heads: int = 30
    norm_eps: float = 1e-5
    qk_norm: bool = True
    cap_feat_dim: int = 2560
    rope_theta: float = 256.0
    t_scale: float = 1000.0
    axes_dims: list[int] = field(default_factory=lambda: [32, 48, 48])
    axes_lens: list[int] = field(default_factory=lambda: [1536, 512, 512])
    all_patch_size: tuple[int, ...] = (2,)
    all_f_patch_size: tuple[int, ...] = (1,)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def kwargs(self) -> dict:
        return asdict(self)

    @classmethod
    def from_shapes(cls, shapes: Shapes) -> DiTConfig:
        dim, cap_feat_dim = _shape(shapes, "cap_embedder.1.weight")
        _, patch_features = _shape(shapes, "all_x_embedder.2-1.weight")
        (head_dim,) = _shape(shapes, "layers.0.attention.norm_q.weight")
        q_out = _shape(shapes, "layers.0.attention.to_q.weight")[0]
        kv_out = _shape(shapes, "layers.0.attention.to_k.weight")[0]
        hidden = _shape(shapes, "layers.0.feed_forward.w1.weight")[0]
        if hidden != int(dim / 3 * 8):
            raise ConfigError(
                f"feed-forward width {hidden} does not match Z-Image's int(dim*8/3) for dim {dim}"
            )
        if q_out != dim or dim % head_dim:
            raise ConfigError(f"attention width {q_out} / head_dim {head_dim} do not fit dim {dim}")
        return cls(
            in_channels=patch_features // 4,
            dim=dim,
            n_layers=count_indexed(shapes, "layers"),
            n_refiner_layers=count_indexed(shapes, "noise_refiner"),
            n_heads=dim // head_dim,
            n_kv_heads=kv_out // head_dim,
            cap_feat_dim=cap_feat_dim,
            axes_dims=rope_axes_dims(head_dim),
        )


@dataclass(frozen=True)
class TextEncoderConfig:
    """Qwen3 dimensions; the rest of Qwen3-4B's config is fixed by the architecture."""

    vocab_size: int = 151936
    hidden_size: int = 2560
    intermediate_size: int = 9728
    num_hidden_layers: int = 36
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 40960

    @classmethod
    def from_shapes(cls, shapes: Shapes) -> TextEncoderConfig:
        vocab, hidden = _shape(shapes, "embed_tokens.weight")
        (head_dim,) = _shape(shapes, "layers.0.self_attn.q_norm.weight")
        return cls(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=_shape(shapes, "layers.0.mlp.gate_proj.weight")[0],
            num_hidden_layers=count_indexed(shapes, "layers"),
            num_attention_heads=_shape(shapes, "layers.0.self_attn.q_proj.weight")[0] // head_dim,
            num_key_value_heads=_shape(shapes, "layers.0.self_attn.k_proj.weight")[0] // head_dim,
            head_dim=head_dim,
        )

    def to_transformers(self):
        from transformers import Qwen3Config

        return Qwen3Config(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            rms_norm_eps=self.rms_norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=True,
            attention_bias=False,
            pad_token_id=151643,
        )


@dataclass(frozen=True)
class VAEConfig:
    """AutoencoderKL arguments for the Flux VAE (16 latent channels, no quant convs)."""

    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 16
    norm_num_groups: int = 32
    scaling_factor: float = 0.3611
    shift_factor: float = 0.1159

    @classmethod
    def from_shapes(cls, shapes: Shapes) -> VAEConfig:
        levels = count_indexed(shapes, "encoder.down_blocks")
        channels = tuple(
            _shape(shapes, f"encoder.down_blocks.{i}.resnets.0.conv2.weight")[0] for i in range(levels)
        )
        latent_channels = _shape(shapes, "decoder.conv_in.weight")[1]
        if latent_channels != 16:
            raise ConfigError(f"the VAE's latent has {latent_channels} channels; the Flux VAE has 16")
        return cls(
            block_out_channels=channels,
            layers_per_block=count_indexed(shapes, "encoder.down_blocks.0.resnets"),
            latent_channels=16,
        )

    def kwargs(self) -> dict:
        n = len(self.block_out_channels)
        return {
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ("DownEncoderBlock2D",) * n,
            "up_block_types": ("UpDecoderBlock2D",) * n,
            "block_out_channels": self.block_out_channels,
            "layers_per_block": self.layers_per_block,
            "act_fn": "silu",
            "latent_channels": self.latent_channels,
            "norm_num_groups": self.norm_num_groups,
            "sample_size": 1024,
            "scaling_factor": self.scaling_factor,
            "shift_factor": self.shift_factor,
            "use_quant_conv": False,
            "use_post_quant_conv": False,
            "mid_block_add_attention": True,
            "force_upcast": True,
        }

"""Loading: both layouts give identical weights, every key is used, bad files get clear errors."""

from __future__ import annotations

import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from zturbo.checkpoints.detect import DIT, TEXT_ENCODER, VAE
from zturbo.checkpoints.layout import COMFY_FILES, resolve_models
from zturbo.checkpoints.load import load_dit, load_text_encoder, load_vae
from zturbo.errors import MissingModelError, ModelFileError

LOADERS = {DIT: load_dit, TEXT_ENCODER: load_text_encoder, VAE: load_vae}
DIFFUSERS_SUB = {DIT: "transformer", TEXT_ENCODER: "text_encoder", VAE: "vae"}


@pytest.mark.parametrize("kind", [DIT, TEXT_ENCODER, VAE])
def test_comfy_and_diffusers_layouts_load_bit_identical(kind, tiny_models_fp32, tiny_diffusers):
    a = LOADERS[kind](tiny_models_fp32 / COMFY_FILES[kind], dtype=torch.float32).module.state_dict()
    b = LOADERS[kind](tiny_diffusers / DIFFUSERS_SUB[kind], dtype=torch.float32).module.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_bf16_file_loads_as_bf16_without_copy(tiny_models):
    model = load_dit(tiny_models / COMFY_FILES[DIT], dtype=torch.bfloat16).module
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(p.is_meta for p in model.parameters())


def test_cast_on_load(tiny_models):
    model = load_vae(tiny_models / COMFY_FILES[VAE], dtype=torch.float32).module
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def _rewrite(src: Path, dst: Path, edit) -> Path:
    sd = load_file(str(src))
    edit(sd)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(dst))
    return dst


def test_missing_key_fails_loudly(tiny_models, tmp_path):
    bad = _rewrite(
        tiny_models / COMFY_FILES[DIT], tmp_path / "dit.safetensors", lambda sd: sd.pop("x_pad_token")
    )
    with pytest.raises(ModelFileError, match=r"1 weights missing \(e\.g\. x_pad_token\)"):
        load_dit(bad, dtype=torch.float32)


def test_unused_key_fails_loudly(tiny_models, tmp_path):
    def add(sd):
        sd["layers.0.attention.extra.weight"] = torch.zeros(2)

    bad = _rewrite(tiny_models / COMFY_FILES[DIT], tmp_path / "dit.safetensors", add)
    with pytest.raises(
        ModelFileError, match=r"1 unexpected tensors \(e\.g\. layers\.0\.attention\.extra\.weight\)"
    ):
        load_dit(bad, dtype=torch.float32)


def test_known_unused_lumina_norm_is_accepted(tiny_models, tmp_path):
    def add(sd):
        sd["norm_final.weight"] = torch.ones(64)

    ok = _rewrite(tiny_models / COMFY_FILES[DIT], tmp_path / "dit.safetensors", add)
    load_dit(ok, dtype=torch.float32)


def test_vae_in_diffusion_models_is_named(tiny_models):
    with pytest.raises(ModelFileError, match=r"ae\.safetensors: is Flux VAE, not a Z-Image diffusion model"):
        load_dit(tiny_models / COMFY_FILES[VAE], dtype=torch.float32)


def test_text_encoder_as_vae_is_named(tiny_models):
    with pytest.raises(ModelFileError, match="is Qwen3 text encoder, not a Flux VAE"):
        load_vae(tiny_models / COMFY_FILES[TEXT_ENCODER], dtype=torch.float32)


def test_truncated_file(tiny_models, tmp_path):
    src = tiny_models / COMFY_FILES[DIT]
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(
        ModelFileError, match=r"truncated\.safetensors: is truncated: tensor .* Download it again"
    ):
        load_dit(bad, dtype=torch.float32)


def test_garbage_file(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x00\x01" * 64)
    with pytest.raises(ModelFileError, match="model.safetensors: is not a safetensors or GGUF file"):
        load_dit(bad, dtype=torch.float32)


@pytest.mark.parametrize(
    ("keys", "family"),
    [
        ({"double_blocks.0.img_attn.qkv.weight": (6, 2)}, "a Flux diffusion model"),
        (
            {
                "model.diffusion_model.input_blocks.0.0.weight": (4, 4, 3, 3),
                "conditioner.embedders.0.x": (1,),
            },
            "an SDXL checkpoint",
        ),
        ({"model.diffusion_model.joint_blocks.0.x.weight": (2,)}, "Stable Diffusion 3"),
        (
            {"decoder.conv_in.weight": (512, 4, 3, 3), "decoder.mid.block_1.conv1.weight": (2,)},
            "a 4-channel VAE",
        ),
    ],
)
def test_other_model_families_are_named(tmp_path, keys, family):
    path = tmp_path / "other.safetensors"
    save_file({k: torch.zeros(s) for k, s in keys.items()}, str(path))
    with pytest.raises(ModelFileError, match=family):
        load_dit(path, dtype=torch.float32)


def test_pickle_files_are_refused_by_extension(tmp_path):
    path = tmp_path / "z_image.ckpt"
    path.write_bytes(b"anything")
    with pytest.raises(ModelFileError, match="pickle-based file.*never loads pickle"):
        load_dit(path, dtype=torch.float32)


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_pickle_content_refused_whatever_the_name(tmp_path, writer):
    path = tmp_path / "innocent.safetensors"
    if writer == "torch.save":
        torch.save({"w": torch.zeros(1)}, path)
        assert zipfile.is_zipfile(path)
    else:
        path.write_bytes(pickle.dumps({"w": 1}, protocol=4))
    with pytest.raises(ModelFileError, match="contains a pickle"):
        load_dit(path, dtype=torch.float32)


def test_safetensors_header_length_with_low_byte_0x80_is_not_a_pickle(tmp_path):
    """The first byte of a safetensors file is its header length's low byte: 0x80 is no pickle opcode there."""
    from zturbo.checkpoints.reader import open_checkpoint

    path = tmp_path / "x.safetensors"
    for pad in range(256):
        save_file({"w": torch.zeros(2)}, str(path), metadata={"p": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert open_checkpoint(path).shape("w") == (2,)


def test_no_pickle_is_ever_loaded(tiny_models, monkeypatch):
    """Loading every component must not touch pickle machinery at all."""

    def boom(*args, **kwargs):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "Unpickler", boom)
    monkeypatch.setattr(torch, "load", boom)
    paths = resolve_models(tiny_models)
    load_dit(paths.dit, dtype=torch.float32)
    load_text_encoder(paths.text_encoder, dtype=torch.float32)
    load_vae(paths.vae, dtype=torch.float32)


def test_missing_files_say_where_and_how(tmp_path, tiny_models):
    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    (models / COMFY_FILES[VAE]).unlink()
    with pytest.raises(MissingModelError) as info:
        resolve_models(models)
    message = str(info.value)
    assert "Flux VAE: put it at" in message and str(Path("vae") / "ae.safetensors") in message
    assert "zturbo models pull" in message and "Comfy-Org/z_image_turbo" in message
    assert "diffusion model" not in message  # the DiT is present


def test_renamed_files_are_found_by_content(tmp_path, tiny_models):
    models = tmp_path / "models"
    for kind, rel in COMFY_FILES.items():
        dst = models / rel.split("/")[0] / f"my_{kind}.safetensors"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_models / rel, dst)
    # a stray VAE among the diffusion models must not be picked as the DiT
    shutil.copy(tiny_models / COMFY_FILES[VAE], models / "diffusion_models" / "a_vae.safetensors")
    paths = resolve_models(models)
    assert paths.dit.name == "my_dit.safetensors"
    assert paths.vae.name == "my_vae.safetensors"

"""`zturbo models pull`: files land in ComfyUI folders, hashes are checked, offline is said clearly.

The hub itself cannot be reached from tests; huggingface_hub's two calls are replaced by local stand-ins
that behave like the hub (they write the file where hf_hub_download would).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest

from zturbo.checkpoints.download import DownloadError, pull_models
from zturbo.errors import ModelFileError

CONTENT = b"weights" * 100


def fake_hub(monkeypatch, sha: str):
    calls = []

    class Api:
        def get_paths_info(self, repo, paths):
            return [
                SimpleNamespace(path=p, size=len(CONTENT), lfs=SimpleNamespace(sha256=sha)) for p in paths
            ]

    def download(repo, filename, local_dir):
        calls.append(filename)
        path = Path(local_dir) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(CONTENT)
        return str(path)

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    return calls


def test_pull_places_files_in_comfy_folders(monkeypatch, tmp_path):
    calls = fake_hub(monkeypatch, hashlib.sha256(CONTENT).hexdigest())
    paths = pull_models(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "diffusion_models/z_image_turbo_bf16.safetensors",
        "text_encoders/qwen_3_4b.safetensors",
        "vae/ae.safetensors",
    ]
    assert calls[0] == "split_files/diffusion_models/z_image_turbo_bf16.safetensors"
    assert pull_models(tmp_path) == paths and len(calls) == 3  # present files are not fetched again


def test_corrupt_download_is_deleted(monkeypatch, tmp_path):
    fake_hub(monkeypatch, "0" * 64)
    with pytest.raises(ModelFileError, match="sha256 does not match"):
        pull_models(tmp_path)
    assert not (tmp_path / "diffusion_models" / "z_image_turbo_bf16.safetensors").exists()


def test_offline_is_said_clearly(monkeypatch, tmp_path):
    class Offline:
        def get_paths_info(self, repo, paths):
            raise OSError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "HfApi", Offline)
    with pytest.raises(DownloadError, match="Are you offline\\?.*copy the three files"):
        pull_models(tmp_path)

"""Server settings: one dataclass, built by the CLI or by tests, read by every router through `app.state`."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from zturbo.errors import InputError
from zturbo.runtime.settings import EngineSettings

MIB = 1024 * 1024
UiKind = Literal["creator", "comfy"]
PREVIEW_METHODS = ("none", "auto", "latent2rgb")


def is_loopback_host(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost` names.

    No DNS look-up on purpose: a name that merely resolves to loopback is not trusted (DNS rebinding).
    """
    if not host:
        return False
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass
class ServerConfig:
    """Everything `zturbo serve` can be told; defaults match ComfyUI's (127.0.0.1:8188, 100 MiB uploads)."""

    host: str = "127.0.0.1"
    port: int = 8188
    models_dir: Path = field(default_factory=lambda: Path("models"))
    output_dir: Path = field(default_factory=lambda: Path("output"))
    input_dir: Path = field(default_factory=lambda: Path("input"))
    temp_dir: Path = field(default_factory=lambda: Path("temp"))
    # Frontend settings and saved workflows (ComfyUI's `user/default/`).
    user_dir: Path = field(default_factory=lambda: Path("user"))
    # Device, dtype, `--vram` (a server plans memory: "auto" by default), `--speed`, `--step-cache`.
    engine: EngineSettings = field(default_factory=lambda: EngineSettings(vram="auto"))
    # Required when `host` is not a loopback address; then every route (WebSocket too) needs it.
    auth_token: str | None = None
    max_upload_bytes: int = 100 * MIB
    # Limit for every other request body (prompts carry the UI workflow, a few MiB at most).
    max_request_bytes: int = 64 * MIB
    ui: UiKind = "creator"
    comfy_frontend_dir: Path | None = None
    # Oldest history entries are dropped past this many (ComfyUI keeps 10000).
    max_history: int = 10000
    # Live previews over the WebSocket: ComfyUI's default is none (API clients that treat every binary
    # frame as a result image rely on it); a prompt can ask with extra_data.preview_method.
    preview_method: str = "none"

    def __post_init__(self) -> None:
        for name in ("models_dir", "output_dir", "input_dir", "temp_dir", "user_dir"):
            setattr(self, name, Path(getattr(self, name)).expanduser().resolve())
        if self.comfy_frontend_dir is not None:
            self.comfy_frontend_dir = Path(self.comfy_frontend_dir).expanduser().resolve()
        if self.preview_method not in PREVIEW_METHODS:
            raise InputError(
                f"preview_method must be one of {', '.join(PREVIEW_METHODS)}, got {self.preview_method!r}"
            )
        if self.ui not in ("creator", "comfy"):
            raise InputError(f"ui must be 'creator' or 'comfy', got {self.ui!r}")
        if self.max_upload_bytes <= 0 or self.max_request_bytes <= 0:
            raise InputError("max_upload_bytes and max_request_bytes must be positive")
        if not 0 <= self.port <= 65535:
            raise InputError(f"port must be 0-65535, got {self.port}")

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    def previews_for(self, extra_data: dict) -> bool:
        """Whether a prompt gets live previews: its own `preview_method` wins over the server's."""
        method = extra_data.get("preview_method") or self.preview_method
        return method in ("auto", "latent2rgb", "taesd")

    def check_serving(self) -> None:
        """Refuse a network-reachable server without a token: anyone could queue jobs and read outputs."""
        if not self.is_loopback and not self.auth_token:
            raise InputError(
                f"refusing to listen on {self.host!r} without --auth-token: "
                "a non-loopback address is reachable from the network"
            )

    def ensure_dirs(self) -> None:
        for path in (self.output_dir, self.input_dir, self.temp_dir, self.user_dir):
            path.mkdir(parents=True, exist_ok=True)

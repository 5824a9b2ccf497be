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
# The name of the folder next to the output folder that holds the server's own state by default.
DATA_DIR_NAME = ".zturbo"
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


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


def is_ip_literal(host: str | None) -> bool:
    try:
        ipaddress.ip_address((host or "").strip().strip("[]"))
    except ValueError:
        return False
    return True


def default_data_dir(output_dir: Path) -> Path:
    """`.zturbo/` beside the output folder: the history stays with the images it lists."""
    return output_dir.parent / DATA_DIR_NAME


@dataclass
class ServerConfig:
    """Everything `zturbo serve` can be told; defaults match ComfyUI's (127.0.0.1:8188, 100 MiB uploads)."""

    host: str = "127.0.0.1"
    port: int = 8188
    models_dir: Path = field(default_factory=lambda: Path("models"))
    output_dir: Path = field(default_factory=lambda: Path("output"))
    input_dir: Path = field(default_factory=lambda: Path("input"))
    # The server's own state (history and queue database, and by default `user/` and `temp/`), kept
    # out of every folder a client can name; default: `.zturbo/` next to the output folder.
    data_dir: Path | None = None
    # Default `<data_dir>/temp` (PreviewImage files, `/view?type=temp`).
    temp_dir: Path | None = None
    # Frontend settings, saved workflows and styles (ComfyUI's `user/default/`); default `<data_dir>/user`.
    user_dir: Path | None = None
    # Device, dtype, `--vram` (a server plans memory: "auto" by default), `--speed`, `--step-cache`.
    engine: EngineSettings = field(default_factory=lambda: EngineSettings(vram="auto"))
    # Required when `host` is not a loopback address; then every route (WebSocket too) needs it.
    auth_token: str | None = None
    # Host names (or addresses) besides loopback and `host` that requests may be addressed to
    # (`--allowed-host`), e.g. the machine's LAN name; "*" turns the Host check off. Any other `Host`
    # header is refused (DNS rebinding: a web page whose name resolves to this machine).
    allowed_hosts: tuple[str, ...] = ()
    max_upload_bytes: int = 100 * MIB
    # Limit for every other request body (prompts carry the UI workflow, a few MiB at most).
    max_request_bytes: int = 64 * MIB
    # Bounds on what one prompt may hold (a workflow of a few hundred nodes is large).
    max_prompt_nodes: int = 5000
    max_prompt_bytes: int = 8 * MIB
    # Images decoded for a client (`/view` previews, `/upload`, `/zturbo/inspect`) may hold this many pixels.
    max_image_pixels: int = 8192 * 8192
    ui: UiKind = "creator"
    comfy_frontend_dir: Path | None = None
    # Oldest history entries are dropped past this many (ComfyUI keeps 10000).
    max_history: int = 10000
    # Live previews over the WebSocket: ComfyUI's default is none (API clients that treat every binary
    # frame as a result image rely on it); a prompt can ask with extra_data.preview_method.
    preview_method: str = "none"
    # A pool of Ray workers (`zturbo.server.pool`): `workers` local ones (0: the one in-process worker),
    # or join the Ray cluster at `ray_address` (then `workers` defaults to its GPU count).
    workers: int = 0
    ray_address: str | None = None
    # Context parallel (`--cp G`, zturbo.parallel): each image's DiT split over G local GPUs (or CPU
    # processes with gloo); this process is rank 0. 1: off.
    cp: int = 1

    def __post_init__(self) -> None:
        for name in ("models_dir", "output_dir", "input_dir"):
            setattr(self, name, Path(getattr(self, name)).expanduser().resolve())
        data_dir = default_data_dir(self.output_dir) if self.data_dir is None else self.data_dir
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.temp_dir = Path(self.temp_dir or self.data_dir / "temp").expanduser().resolve()
        self.user_dir = Path(self.user_dir or self.data_dir / "user").expanduser().resolve()
        self.allowed_hosts = tuple(h.strip().lower().strip("[]") for h in self.allowed_hosts if h.strip())
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
        for name in ("max_prompt_nodes", "max_prompt_bytes", "max_image_pixels"):
            if getattr(self, name) <= 0:
                raise InputError(f"{name} must be positive")
        if self.workers < 0:
            raise InputError(f"workers must be 0 or more, got {self.workers}")
        if self.cp < 1:
            raise InputError(f"--cp must be 1 (off) or more, got {self.cp}")
        if self.cp > 1 and self.pooled:
            raise InputError(
                f"--cp {self.cp} splits one image over this machine's GPUs; it does not combine with "
                "--workers/--ray (use one or the other)"
            )
        self._check_state_is_private()

    @property
    def pooled(self) -> bool:
        return self.workers > 0 or self.ray_address is not None

    def _check_state_is_private(self) -> None:
        """The database must not sit in a folder clients can read or write (`/view`, `/upload`, `/userdata`)."""
        assert self.data_dir is not None  # resolved in __post_init__
        for name in ("output_dir", "input_dir", "temp_dir", "user_dir"):
            folder: Path = getattr(self, name)
            if self.data_dir == folder or folder in self.data_dir.parents:
                raise InputError(
                    f"data_dir {self.data_dir} is inside {name} {folder}: clients could read or replace "
                    "the server's database there; pick a data directory outside it"
                )

    @property
    def state_db(self) -> Path:
        """History and queue, one SQLite file (one transaction moves a job from the queue to history)."""
        assert self.data_dir is not None  # resolved in __post_init__
        return self.data_dir / "zturbo.sqlite3"

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

    def host_allowed(self, host: str | None) -> bool:
        """Whether a request addressed to `host` (the Host header's name, no port) may be served.

        Loopback names and addresses, the address the server listens on, and `allowed_hosts`. When it
        listens on every address (0.0.0.0, ::), any IP address too: a page can only rebind a *name*.
        """
        if "*" in self.allowed_hosts:
            return True
        if not host:
            return False
        name = host.strip().strip("[]").lower()
        if is_loopback_host(name) or name in self.allowed_hosts:
            return True
        listen = self.host.strip().strip("[]").lower()
        if listen in WILDCARD_HOSTS:
            return is_ip_literal(name)
        return name == listen

    def ensure_dirs(self) -> None:
        for path in (self.output_dir, self.input_dir, self.temp_dir, self.user_dir, self.data_dir):
            assert path is not None  # every folder is resolved in __post_init__
            path.mkdir(parents=True, exist_ok=True)

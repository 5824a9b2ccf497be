"""Real server processes for the crash, fuzz and load tests: `python -m zturbo serve` (the real engine
on the tests' tiny models) or `serve_double.py` (the same app on the test-double executor), each on a
free port of 127.0.0.1, killed with SIGKILL when a test wants a crash."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
LISTENING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


@dataclass
class ServerProcess:
    args: list[str]
    log_path: Path
    process: subprocess.Popen | None = None
    port: int = 0
    lines: list[str] = field(default_factory=list)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws(self, client_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws?clientId={client_id}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def rss(self) -> int:
        return psutil.Process(self.pid).memory_info().rss

    def start(self, timeout: float = 120) -> ServerProcess:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]), "PYTHONUNBUFFERED": "1"}
        log = self.log_path.open("a", encoding="utf-8")
        self.process = subprocess.Popen(
            [sys.executable, *self.args, "--port", "0"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        found = threading.Event()

        def pump() -> None:
            assert self.process is not None and self.process.stdout is not None
            for line in self.process.stdout:
                log.write(line)
                log.flush()
                self.lines.append(line)
                match = LISTENING.search(line)
                if match and not found.is_set():
                    self.port = int(match.group(1))
                    found.set()
            log.close()

        threading.Thread(target=pump, daemon=True).start()
        if not found.wait(timeout):
            self.kill()
            raise AssertionError(f"server did not start; log: {self.log_path.read_text()[-3000:]}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.http}/prompt", timeout=5).status_code in (200, 401):
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("server does not answer")

    def kill(self) -> None:
        """SIGKILL (TerminateProcess on Windows): no shutdown code runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)
            self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def serve_args(root: Path, models: Path | None = None, *extra: str) -> list[str]:
    """`python -m zturbo serve` on folders under `root` (CPU, the tiny models)."""
    return [
        "-m", "zturbo", "serve",
        "--models-dir", str(models or root / "models"),
        "--output-dir", str(root / "output"),
        "--input-dir", str(root / "input"),
        "--device", "cpu",
        *extra,
    ]  # fmt: skip


def double_args(root: Path, *extra: str) -> list[str]:
    """`serve_double.py`: the real app and `serve()`, with the test-double executor."""
    return [str(TESTS / "server" / "serve_double.py"), str(root), *extra]


@contextmanager
def running(args: list[str], log_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(args, log_path).start()
    try:
        yield server
    finally:
        server.stop()

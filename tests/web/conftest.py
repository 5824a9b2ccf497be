"""Browser tests: `zturbo serve`'s app (real graph executor, real engine on CPU, tiny random-weight
models named like the real files) on uvicorn at 127.0.0.1:<random port>, driven by headless Chromium.

Skipped, with the reason, only when Debian's `chromium` or the `playwright` package is missing.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server.conftest import LiveServer, run_live

from zturbo.runtime.settings import EngineSettings
from zturbo.server import ServerConfig, create_app

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"
HERE = Path(__file__).resolve().parent

try:
    from playwright import sync_api
except ImportError:  # pragma: no cover - depends on the environment
    sync_api = None


def missing_reason() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if sync_api is None:
        return "the playwright package is not installed (pip install -e '.[test]')"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install -y chromium)"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = missing_reason()
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.web)
            if reason is not None:
                item.add_marker(
                    pytest.mark.skip(reason=f"browser tests need Chromium and Playwright: {reason}")
                )


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


@pytest.fixture
def web_config(tmp_path: Path, tiny_models: Path) -> ServerConfig:
    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    return ServerConfig(
        models_dir=models,
        output_dir=tmp_path / "output",
        input_dir=tmp_path / "input",
        temp_dir=tmp_path / "temp",
        user_dir=tmp_path / "user",
        engine=EngineSettings("cpu", vram="auto"),
    )


@pytest.fixture
def server(web_config: ServerConfig) -> Iterator[LiveServer]:
    """The app `zturbo serve` runs (default executor: real graph, real engine) on a free port."""
    yield from run_live(create_app(web_config))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-background-networking"]
        )
        yield browser
        browser.close()


class PageLog:
    """What went wrong in the page: uncaught errors, and HTTP errors from our server."""

    def __init__(self, page: Any, origin: str) -> None:
        self.errors: list[str] = []
        self.http: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("response", lambda r: self._response(r, origin))

    def _response(self, response: Any, origin: str) -> None:
        if response.status >= 400 and response.url.startswith(origin):
            self.http.append(f"{response.status} {response.url}")


@pytest.fixture
def page(browser: Any, server: LiveServer) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


@pytest.fixture
def page_log(page: Any, server: LiveServer) -> PageLog:
    return PageLog(page, server.http)


@pytest.fixture
def creator(page: Any, server: LiveServer, page_log: PageLog) -> Any:
    """The creator page, loaded and ready (options, styles, gallery and models fetched)."""
    page.goto(server.http + "/")
    page.wait_for_selector("body[data-ready=true]")
    return page

"""The real ComfyUI frontend's Logs panel and template browser against the real server: the panel shows
the server's own log records (and new ones as they are logged), the browser shows the templates'
thumbnails; no console errors and no 4xx beyond absent user files."""

from __future__ import annotations

import logging
from typing import Any

from server.conftest import LiveServer
from web.test_comfy_frontend import open_frontend

# ComfyUI answers 404 for these when the user has none (no user.css, no saved workflows).
ABSENT_USER_FILES = ("/user.css", "/api/userdata")
LOGS_TEXT = "() => document.querySelector('.xterm-rows')?.textContent ?? ''"
# The browser fetches each thumbnail and shows it from a blob: URL; these are the dialog's pictures.
DIALOG_IMAGES = """() => [...document.querySelectorAll('[role=dialog] img')]
  .map((img) => [img.alt || img.src, img.complete && img.naturalWidth > 0])"""


def console_errors(page: Any) -> list[str]:
    """Console errors and uncaught exceptions; the browser's own line for an allowed 404 is left out
    (that response is checked by `unexpected_http`)."""
    errors: list[str] = []

    def on_console(message: Any) -> None:
        url = (message.location or {}).get("url", "")
        allowed = message.text.startswith("Failed to load resource") and any(
            k in url for k in ABSENT_USER_FILES
        )
        if message.type == "error" and not allowed:
            errors.append(f"{message.text} ({url})")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors


def unexpected_http(page_log: Any) -> list[str]:
    return [u for u in page_log.http if not (u.startswith("404") and any(k in u for k in ABSENT_USER_FILES))]


def test_logs_panel_shows_the_server_log(
    page: Any, server: LiveServer, page_log: Any, screenshots: Any
) -> None:
    errors = console_errors(page)
    logging.getLogger("zturbo.webtest").warning("before the panel opened: 日志")
    open_frontend(page, server)
    page.evaluate("app.extensionManager.command.execute('Workspace.ToggleBottomPanelTab.logs-terminal')")
    page.wait_for_function(f"({LOGS_TEXT})().includes('before the panel opened')", timeout=30_000)
    assert "Unable to load logs" not in page.content()
    page.wait_for_timeout(500)  # the panel subscribes once its socket has a client id
    logging.getLogger("zturbo.webtest").warning("after it subscribed")
    page.wait_for_function(f"({LOGS_TEXT})().includes('after it subscribed')", timeout=30_000)
    assert "WARNING zturbo.webtest: before the panel opened: 日志" in page.evaluate(LOGS_TEXT)
    page.screenshot(path=str(screenshots / "comfy-logs-panel.png"))
    assert errors == []
    assert unexpected_http(page_log) == []


def test_template_browser_shows_thumbnails(
    page: Any, server: LiveServer, page_log: Any, screenshots: Any
) -> None:
    errors = console_errors(page)
    thumbnails: dict[str, int] = {}
    page.on(
        "response",
        lambda r: (
            "/templates/" in r.url and not r.url.endswith(".json") and thumbnails.update({r.url: r.status})
        ),
    )
    open_frontend(page, server)
    page.evaluate("app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    page.wait_for_function(f"({DIALOG_IMAGES})().filter(([, ok]) => ok).length >= 6", timeout=30_000)
    page.get_by_placeholder("Search").first.fill("z image turbo")
    page.wait_for_function(
        "() => [...document.querySelectorAll('[role=dialog] img')].some((i) => i.naturalWidth > 0"
        " && (i.alt || '').includes('Z-Image'))",
        timeout=30_000,
    )
    # Every visible thumbnail has finished loading or failed (a failed one is "complete" with no width,
    # so the assertion below names it); a fixed wait flaked on a loaded 2-core machine.
    page.wait_for_function(
        "() => [...document.querySelectorAll('[role=dialog] img')].every((i) => i.complete)", timeout=30_000
    )
    page.screenshot(path=str(screenshots / "comfy-template-browser.png"))
    shown = page.evaluate(DIALOG_IMAGES)
    assert shown and all(ok for _, ok in shown), [name for name, ok in shown if not ok]
    assert any("/templates/image_z_image_turbo-1.webp" in url for url in thumbnails), sorted(thumbnails)
    assert set(thumbnails.values()) == {200}, {u: s for u, s in thumbnails.items() if s != 200}
    assert errors == []
    assert unexpected_http(page_log) == []

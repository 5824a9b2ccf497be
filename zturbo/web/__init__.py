"""The creator page: static files only (served by `zturbo.server.web_mount`)."""

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"

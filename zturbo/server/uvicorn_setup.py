"""How `serve` runs uvicorn: the access log never shows the auth token, and a WebSocket handshake that
is too large gets its answer.

- `?token=` (the WebSocket's way to authenticate) is in every logged request line; `RedactToken`
  replaces its value with `***` on uvicorn's loggers.
- uvicorn's websockets protocol logs "HTTP response sent (414 Request-URI Too Long)" for an upgrade
  whose request line is over 8 KiB, but leaves that answer in the parser's buffer and the connection
  open: the client waits forever. `AnsweringWebSocketProtocol` writes the answer and closes.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import uvicorn

log = logging.getLogger(__name__)
TOKEN_IN_QUERY = re.compile(r"(?i)([?&](?:token|auth_token)=)[^&\s\"']*")
LOGGERS = ("uvicorn.access", "uvicorn.error")


def redact(text: str) -> str:
    return TOKEN_IN_QUERY.sub(r"\1***", text)


class RedactToken(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def install_log_redaction() -> None:
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactToken) for f in logger.filters):
            logger.addFilter(RedactToken())


def websocket_protocol() -> Any:
    """uvicorn's sans-I/O websockets protocol, answering handshakes its parser refused; "auto" if absent."""
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    except ImportError:  # another uvicorn or no websockets: its own choice
        return "auto"

    class AnsweringWebSocketProtocol(WebSocketsSansIOProtocol):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            conn = getattr(self, "conn", None)
            if conn is None or getattr(self, "handshake_initiated", True):
                return
            if getattr(conn, "handshake_exc", None) is not None:
                self.transport.write(b"".join(conn.data_to_send()))
                self.transport.close()

    return AnsweringWebSocketProtocol


def uvicorn_config(app: Any, host: str, port: int, log_level: str = "info") -> uvicorn.Config:
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, ws=websocket_protocol())
    install_log_redaction()  # after Config: it (re)configures uvicorn's loggers
    return config

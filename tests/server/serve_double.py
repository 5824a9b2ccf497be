"""`python tests/server/serve_double.py ROOT [--port N] [--slow SECONDS]`: `zturbo.server.serve` (the
production app, uvicorn set-up and all) with the test-double executor, for tests that need a real
process but not a real engine (fuzzing, load, kill -9 of the queue)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from server.doubles import FakeExecutor
from zturbo.server import ServerConfig, serve


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-upload", type=int, default=8 * 2**20)
    parser.add_argument("--auth-token", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = ServerConfig(
        port=args.port,
        models_dir=args.root / "models",
        output_dir=args.root / "output",
        input_dir=args.root / "input",
        max_upload_bytes=args.max_upload,
        max_request_bytes=32 * 2**20,
        preview_method="auto",
        auth_token=args.auth_token,
    )
    serve(config, executor=FakeExecutor(config.output_dir))


if __name__ == "__main__":
    main()

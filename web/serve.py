"""`impasto web`: serve the web pages and the JSON API with gunicorn."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from shared.settings import SettingsError, load_settings


def main(argv: list[str] | None = None) -> int:
    """Serve the web form, job pages and JSON API (gunicorn)."""
    parser = argparse.ArgumentParser(prog="impasto web", description=main.__doc__)
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 for every interface)"
    )
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn processes (default: 2)")
    parser.add_argument(
        "--threads", type=int, default=16, help="threads per process; each live job page holds one (default: 16)"
    )
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        print(f"impasto web: error: --port {args.port} is not a port number (1-65535)", file=sys.stderr)
        return 2
    try:
        settings = load_settings()
        settings.require_broker()
        if settings.secret_key is None:
            # Every process must sign cookies and CSRF tokens with the same key; one made up
            # per process would make each page's token fail on the other processes.
            raise SettingsError(
                "IMPASTO_SECRET_KEY is not set: give every web process the same random key of 32 "
                'or more characters (python -c "import secrets; print(secrets.token_urlsafe(32))"), '
                "or run `impasto up`, which keeps one in its data folder"
            )
    except SettingsError as err:
        print(f"impasto web: error: {err}", file=sys.stderr)
        return 2

    from gunicorn.app.base import BaseApplication

    from .app import create_app

    class Server(BaseApplication):
        def load_config(self) -> None:
            options: dict[str, Any] = {
                "bind": f"{args.host}:{args.port}",
                "workers": args.workers,
                "threads": args.threads,
                "worker_class": "gthread",
                "accesslog": "-",
                "graceful_timeout": 5,
                "timeout": 60,
                "control_socket_disable": True,
            }
            for key, value in options.items():
                if key in self.cfg.settings:
                    self.cfg.set(key, value)

        def load(self):
            # Each gunicorn process builds its own app (and database pool) after the fork.
            return create_app(settings)

    os.environ.setdefault("SERVER_SOFTWARE", "gunicorn")
    Server().run()
    return 0

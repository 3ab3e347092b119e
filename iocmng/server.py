"""``iocmng-server``: the process entry point, where the service meets its REST app.

The one module above both :mod:`iocmng.api` and :mod:`iocmng.service`: it
builds the :class:`~iocmng.service.service.Service` from the settings and
hands it an HTTP front (the aiohttp app on the listening socket) to serve
with. ``python -m iocmng`` is the same command.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from typing import TYPE_CHECKING

from .config.settings import load_settings, unknown_variables
from .errors import SettingsError
from .logs import setup_logging
from .service.service import Service

if TYPE_CHECKING:
    from aiohttp import web


class HttpFront:
    """The REST app of one generation on the (possibly inherited) listening socket."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None

    def prepare(self) -> None:
        """Import the REST app and aiohttp's server (0.2-0.3 s) while iocInit runs in a worker
        thread: imported before it, they would lengthen every reload's CA/PVA outage."""
        from .api import app  # noqa: F401

    async def start(self, sock: socket.socket) -> None:
        """Build the app (the service has booted: its records and plugins exist) and serve it."""
        from aiohttp import web

        from .api.app import create_app

        self.app = create_app(self.service)
        self._runner = web.AppRunner(
            self.app, handle_signals=False, access_log=None, shutdown_timeout=0.25
        )
        await self._runner.setup()
        # aiohttp closes the socket it serves on when it stops; give it a
        # duplicate so the original stays listening across the exec.
        self._site = web.SockSite(self._runner, sock.dup())
        await self._site.start()

    async def stop_accepting(self) -> None:
        if self._site is not None:
            await self._site.stop()

    async def drain(self, grace: float) -> bool:
        if self.app is None:
            return True
        from .api.keys import IDLE

        try:
            await asyncio.wait_for(self.app[IDLE].wait(), grace)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="iocmng-server", description="iocmng service (settings: IOCMNG_* variables)"
    )
    parser.add_argument(
        "--demo", action="store_true", help="also load the example plugins (plugins_examples/)"
    )
    parser.add_argument(
        "--supervise",
        action="store_true",
        help="run the service as a child and restart it if its process dies (iocmng/service/supervisor.py)",
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        settings.check_exposure()
    except SettingsError as exc:
        print(f"iocmng-server: invalid setting: {exc.detail}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    for warning in unknown_variables(os.environ):
        logging.getLogger("iocmng.settings").warning("%s", warning)
    if args.supervise:
        from .service.supervisor import supervise

        try:
            return supervise(settings.bind_host, settings.port, ["--demo"] if args.demo else [])
        except OSError as exc:
            print(f"iocmng-server: cannot start: {exc}", file=sys.stderr)
            return 1

    async def serve() -> None:
        service = Service.from_settings(settings, demo=args.demo)
        await service.run(HttpFront(service))

    try:
        asyncio.run(serve())
    except SettingsError as exc:
        print(f"iocmng-server: invalid setting: {exc.detail}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"iocmng-server: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

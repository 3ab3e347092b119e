"""The floor of the reload gap (issue 3, item 11): a bare process, no iocmng.

It does the least any generation must do: import softioc and aiohttp, build
``--plugins`` × 9 records (the record types of ``plugins_examples/sync_monitor``:
ENABLE, STATUS, MESSAGE, CYCLE_COUNT, two ``ao`` inputs with ``on_update``,
``ai``, ``bi`` and ``stringin`` outputs), run ``iocInit`` on an
``AsyncioDispatcher`` made on the running loop, and answer
``GET /api/v1/health`` with its generation. ``POST /reload`` makes it do what
iocmng's reload does, minus iocmng: stop serving, then ``os.execv`` itself
with the listening socket inherited (``FLOOR_LISTEN_FD``), so a client that
polls /health measures the gap exactly as it does against iocmng-server.

Each generation prints one JSON line of phase times to stderr (seconds since
the exec: imports, records, iocInit, first HTTP serving).

    EPICS_...=loopback python bench/floor_reload.py --port 8123 --plugins 100

Not meant to be run by hand except to look at it; bench_service.py drives it.
"""

from __future__ import annotations

import time

T_EXEC = time.time()  # before the heavy imports (the interpreter's own start is not counted here)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402

FD_ENV = "FLOOR_LISTEN_FD"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--plugins", type=int, required=True)
    ap.add_argument("--prefix", default="FLOOR")
    ap.add_argument("--generation", type=int, default=1)
    args = ap.parse_args()
    t_exec = float(os.environ.pop("FLOOR_EXEC_AT", T_EXEC))
    phases: dict[str, float] = {"interp_start": T_EXEC - t_exec}

    from aiohttp import web
    from softioc import asyncio_dispatcher, builder, softioc

    phases["imports"] = time.time() - t_exec

    fd = os.environ.pop(FD_ENV, None)
    if fd is not None:
        sock = socket.socket(fileno=int(fd))
        sock.set_inheritable(False)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", args.port))
        sock.listen(1024)
        sock.setblocking(False)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        records = []
        for i in range(args.plugins):
            base = f"{args.prefix}:P{i:04d}"
            records += [
                builder.boolOut(
                    f"{base}:ENABLE", "OFF", "ON", initial_value=1, on_update=lambda v: None
                ),
                builder.mbbIn(
                    f"{base}:STATUS", "INIT", "RUN", "PAUSED", "END", "ERROR", initial_value=0
                ),
                builder.stringIn(f"{base}:MESSAGE", initial_value=""),
                builder.longIn(f"{base}:CYCLE_COUNT", initial_value=0),
                builder.aOut(
                    f"{base}:SETPOINT",
                    initial_value=50.0,
                    EGU="%",
                    PREC=2,
                    LOPR=0,
                    HOPR=100,
                    DRVL=0,
                    DRVH=100,
                    on_update=lambda v: None,
                ),
                builder.aOut(f"{base}:GAIN", initial_value=1.0, PREC=3, on_update=lambda v: None),
                builder.aIn(f"{base}:READING", initial_value=0.0, EGU="%", PREC=3),
                builder.boolIn(f"{base}:ALARM", "OK", "ALARM", initial_value=0),
                builder.stringIn(f"{base}:LAST_INPUT", initial_value=""),
            ]
        phases["records_built"] = time.time() - t_exec
        dispatcher = asyncio_dispatcher.AsyncioDispatcher(loop=loop)
        builder.LoadDatabase()
        softioc.iocInit(dispatcher)
        phases["iocInit"] = time.time() - t_exec

        stop = asyncio.Event()
        first = {"answered": False}

        async def health(_request: web.Request) -> web.Response:
            if not first["answered"]:
                first["answered"] = True
                phases["first_answer"] = time.time() - t_exec
                print(
                    json.dumps({"generation": args.generation, "records": len(records), **phases}),
                    file=sys.stderr,
                    flush=True,
                )
            return web.json_response({"status": "ok", "generation": args.generation})

        async def reload(_request: web.Request) -> web.Response:
            loop.call_later(0.05, stop.set)
            return web.json_response({"generation": args.generation + 1})

        app = web.Application()
        app.router.add_get("/api/v1/health", health)
        app.router.add_post("/reload", reload)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=3.0)
        await runner.setup()
        site = web.SockSite(runner, sock.dup())
        await site.start()
        phases["serving"] = time.time() - t_exec
        await stop.wait()
        await site.stop()
        await runner.cleanup()

    asyncio.run(serve())
    # Exec the next generation, handing over the listening socket.
    sock.set_inheritable(True)
    os.environ[FD_ENV] = str(sock.fileno())
    os.environ["FLOOR_EXEC_AT"] = repr(time.time())
    argv = [
        sys.executable,
        os.path.abspath(__file__),
        "--port",
        str(args.port),
        "--plugins",
        str(args.plugins),
        "--prefix",
        args.prefix,
        "--generation",
        str(args.generation + 1),
    ]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


if __name__ == "__main__":
    main()

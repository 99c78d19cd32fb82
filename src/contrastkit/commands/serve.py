"""``contrastkit serve``: a local web explorer of a run (grid, map, neighbours, search by image, review, problems)."""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

NAME = "serve"
HELP = "open a local web explorer of a run: images, map, neighbours, search by image, label review, data problems"
DESCRIPTION = (
    "Serve a local web page over a run folder's files (no database): a paged, filterable grid of the\n"
    "images, the 2-D map linked with it, nearest neighbours of any image or of an uploaded one (embedded\n"
    "by the run's model), review of the least confident auto-labels with keyboard shortcuts (corrections\n"
    "go to RUN/seed_labels.csv), re-spread of the corrections to every item, and the data problems of\n"
    "`contrastkit audit`. Prints the URL to open: it holds a random token, without which every request\n"
    "gets 403.\n\n"
    "Writes into the run folder: seed_labels.csv (your labels), map.npy / map.json (the cached map),\n"
    "labels.csv / label_metrics.json (re-spread), audit.csv / audit.json (the problems check)."
)
FORMATTER = argparse.RawDescriptionHelpFormatter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The run folder, where to listen, whether to open a browser."""
    parser.add_argument("run", type=Path, help="run folder (or any folder with embeddings.npy and items.csv)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 exposes the "
                        "run to the network, guarded by the token alone)")
    parser.add_argument("--port", type=int, default=8765, help="port (default: 8765; 0: any free port)")
    parser.add_argument("--no-browser", action="store_true", help="only print the URL, do not open a browser")
    parser.add_argument("--map-points", type=int, default=None, metavar="N",
                        help="items in the t-SNE of the map (default: 5000; the others are placed among them)")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one); a ConfigError naming the address on failure."""
    from contrastkit.errors import ConfigError

    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit it: a response written in two parts (headers, body) is not held back by
    # Nagle's algorithm waiting for the client's delayed ACK (40 ms per request otherwise)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None
    sock.listen(128)
    return sock


def url_of(host: str, port: int, token: str) -> str:
    """The URL to open (a wildcard bind is shown as 127.0.0.1)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{f'[{shown}]' if ':' in shown else shown}:{port}/?token={token}"


def run(args: argparse.Namespace) -> int:
    """Read the run, bind, print the URL (and a warning for a wildcard host), serve until interrupted."""
    import uvicorn

    from contrastkit.explorer.app import allowed_hosts, create_app
    from contrastkit.explorer.loading import MAP_POINTS
    from contrastkit.explorer.state import RunState

    sock = bind(args.host, args.port)
    port = sock.getsockname()[1]
    try:
        state = RunState(args.run, map_points=args.map_points or MAP_POINTS, log=lambda s: print(s, flush=True))
        app = create_app(state, host=args.host, port=port)
    except BaseException:
        sock.close()
        raise
    if allowed_hosts(args.host, port) is None:
        print(f"warning: --host {args.host} serves this run to every machine that can reach this one; only the token "
              "guards it, and any Host header is accepted", file=sys.stderr, flush=True)
    url = url_of(args.host, port, app.token)
    print(f"contrastkit explorer of {args.run} ({state.n} items): open {url}", flush=True)
    print("Ctrl-C stops it", flush=True)
    if not args.no_browser:
        import webbrowser

        webbrowser.open(url)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    server.run(sockets=[sock])
    return 0


@contextlib.contextmanager
def serving_in_background(app: Any, sock: socket.socket, timeout: float = 60.0) -> Iterator[None]:
    """Serve ``app`` on the bound ``sock`` with uvicorn in a daemon thread for the block (tests, benchmarks, tools).

    Waits until the server has started (RuntimeError after ``timeout`` seconds),
    and on leaving stops it and closes the socket.
    """
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        if not server.started:
            raise RuntimeError(f"the server did not start within {timeout:g} s")
        yield
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()

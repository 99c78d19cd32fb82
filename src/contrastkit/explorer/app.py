"""The explorer's web app: Starlette routes over a :class:`~contrastkit.explorer.state.RunState`, and its guards.

Safe by default (as Jupyter: loopback and a token in the URL; as Datasette:
plain routes, files as the database):

- every request must carry the token: ``?token=T`` (the printed URL) answers
  with a redirect that sets it as an ``HttpOnly; SameSite=Strict`` cookie;
  later requests carry the cookie; anything else gets 403;
- the ``Host`` header must name the bound host and port (a DNS-rebinding
  page has its own host name there): 403 otherwise. Bound to ``0.0.0.0``
  (a warning is printed) any host name is accepted, and the token alone guards;
- no cross-origin access: no CORS header is ever sent; a POST must have
  ``Content-Type: application/json`` (415 otherwise; a form or a "simple"
  cross-site request cannot send that without a preflight) and an ``Origin``
  equal to this server's (403 otherwise);
- bodies are capped (:data:`MAX_JSON_BYTES`, uploads :data:`MAX_UPLOAD_BYTES`;
  413 above), uploads are decoded by the image folders' guarded reader;
- images are served by row index only (``/api/image/<row>``); static files
  from a fixed list of the package's own (no path from a request is opened);
- responses carry a strict Content-Security-Policy (scripts from this
  server only), ``nosniff``, ``no-referrer`` and ``frame-ancestors 'none'``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
from importlib import resources
from typing import Any, Awaitable, Callable
from urllib.parse import quote, urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from contrastkit.errors import ContrastkitError, DataError
from contrastkit.explorer.state import RunState
from contrastkit.runlock import RunLockedError

MAX_UPLOAD_BYTES = 8 * 2**20  # an uploaded image, before base64
MAX_JSON_BYTES = 64 * 2**10  # any other POST body
LOOPBACK = ("127.0.0.1", "localhost", "::1")
STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "map.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
                                 b"connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]


class HTTPProblem(Exception):
    """A request refused with ``status`` and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def allowed_hosts(host: str, port: int) -> set[str] | None:
    """The Host header values accepted for a server bound to ``host:port`` (None: any, for a wildcard bind)."""
    if host in ("0.0.0.0", "::", ""):
        return None
    names = set(LOOPBACK) if host in LOOPBACK else {host}
    return {f"[{h}]:{port}" if ":" in h else f"{h}:{port}" for h in names}


class Guard:
    """ASGI middleware: Host, token cookie, POST content type and origin, security headers (see module doc)."""

    def __init__(self, app: Callable[..., Awaitable[None]], token: str, hosts: set[str] | None, port: int) -> None:
        self.app, self.token, self.hosts = app, token, hosts
        self.cookie = f"contrastkit_{port}"  # cookies are shared across ports: one name per server

    @staticmethod
    def _header(scope: dict[str, Any], name: bytes) -> str | None:
        for k, v in scope.get("headers", []):
            if k == name:
                return v.decode("latin-1")
        return None

    def _check(self, scope: dict[str, Any]) -> Response | None:
        """A refusal (or the token's redirect), or None to let the request through."""
        host = self._header(scope, b"host")
        if self.hosts is not None and host not in self.hosts:
            return _text(403, "forbidden: the Host header does not name this server (DNS rebinding?)")
        request = Request(scope)
        given = request.query_params.get("token")
        if given is not None:
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return _text(403, "forbidden: wrong token; open the URL contrastkit serve printed")
            if scope["method"] != "GET":
                return _text(403, "forbidden: the token in the URL is for opening the page only")
            query = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            path = "/" + request.url.path.lstrip("/")  # never "//host": a redirect stays on this server
            response = Response(status_code=303, headers={"location": quote(path) + (f"?{query}" if query else "")})
            response.set_cookie(self.cookie, self.token, httponly=True, samesite="strict", path="/")
            return response
        cookie = request.cookies.get(self.cookie, "")
        if not hmac.compare_digest(cookie.encode(), self.token.encode()):
            return _text(403, "forbidden: no token; open the URL contrastkit serve printed (it holds the token)")
        if scope["method"] not in ("GET", "HEAD", "POST"):  # OPTIONS (a CORS preflight), PUT, DELETE, ...
            return _text(405, "method not allowed (no cross-origin access)")
        if scope["method"] == "POST":
            kind = (self._header(scope, b"content-type") or "").split(";")[0].strip().lower()
            if kind != "application/json":
                return _text(415, "a POST must be JSON (Content-Type: application/json)")
            origin = self._header(scope, b"origin")
            if origin is None or host is None or origin != f"http://{host}":
                return _text(403, "forbidden: cross-origin request (Origin does not match this server)")
        return None

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        refusal = self._check(scope)
        if refusal is not None:
            await refusal(scope, receive, send_secured)
            return
        await self.app(scope, receive, send_secured)


def _text(status: int, text: str) -> Response:
    return Response(text + "\n", status_code=status, media_type="text/plain; charset=utf-8")


async def read_json(request: Request, cap: int) -> dict[str, Any]:
    """The request's JSON object, refusing bodies over ``cap`` bytes (413) before reading them whole."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > cap):
        raise HTTPProblem(413, f"request body over {cap} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise HTTPProblem(413, f"request body over {cap} bytes")
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise HTTPProblem(400, "the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise HTTPProblem(400, "the body must be a JSON object")
    return value


def _int(request: Request, name: str, default: int | None = None) -> int | None:
    text = request.query_params.get(name)
    if text in (None, ""):
        return default
    try:
        return int(text)
    except ValueError:
        raise HTTPProblem(400, f"{name} must be an integer, got {text!r}") from None


def _float(request: Request, name: str) -> float | None:
    text = request.query_params.get(name)
    if text in (None, ""):
        return None
    try:
        value = float(text)
    except ValueError:
        raise HTTPProblem(400, f"{name} must be a number, got {text!r}") from None
    if value != value:
        raise HTTPProblem(400, f"{name} must be a number, got NaN")
    return value


def create_app(state: RunState, token: str | None = None, host: str = "127.0.0.1", port: int = 8765) -> Guard:
    """The explorer app over ``state``, guarded by ``token`` (default: a new random one, ``app.token``)."""
    token = token or secrets.token_urlsafe(24)
    static = resources.files("contrastkit.explorer") / "static"
    files = {name: (static / name).read_bytes() for name in STATIC}  # read once: no path from a request is opened

    def endpoint(work: Callable[[Request], Any]) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            try:
                value = await work(request)
            except HTTPProblem as e:
                return JSONResponse({"error": str(e)}, status_code=e.status)
            except RunLockedError as e:
                return JSONResponse({"error": str(e)}, status_code=409)
            except ContrastkitError as e:
                return JSONResponse({"error": str(e)}, status_code=400)
            return value if isinstance(value, Response) else JSONResponse(value)
        return handle

    def item_of(request: Request) -> int:
        item = int(request.path_params["row"])
        if not 0 <= item < state.n:
            raise HTTPProblem(404, f"item {item} is not a row of embeddings.npy (0..{state.n - 1})")
        return item

    async def page(request: Request) -> Response:
        return Response(files["index.html"], media_type=STATIC["index.html"])

    async def static_file(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC or name == "index.html":
            raise HTTPProblem(404, "no such file")
        return Response(files[name], media_type=STATIC[name])

    async def info(request: Request) -> dict[str, Any]:
        return state.info()

    async def items(request: Request) -> dict[str, Any]:
        q = request.query_params
        region = None
        if q.get("region"):
            try:
                x0, y0, x1, y1 = (float(v) for v in q["region"].split(","))
            except ValueError:
                raise HTTPProblem(400, "region must be x0,y0,x1,y1") from None
            region = (x0, y0, x1, y1)
        corrected = {"1": True, "0": False}.get(q.get("corrected", ""))
        rows = state.select(split=q.get("split") or None, label=q.get("label") or None, cluster=_int(request, "cluster"),
                            conf_min=_float(request, "conf_min"), conf_max=_float(request, "conf_max"),
                            problem=q.get("problem") or None, region=region, corrected=corrected,
                            changed=q.get("changed") == "1",
                            sort=q.get("sort") or ("severity" if q.get("problem") else "index"))  # worst first
        return state.page(rows, _int(request, "offset", 0), _int(request, "limit", 60))

    async def image(request: Request) -> Response:
        item = item_of(request)
        try:
            png = await run_in_threadpool(state.image_png, item)
        except DataError as e:
            raise HTTPProblem(404, str(e)) from None
        return Response(png, media_type="image/png", headers={"cache-control": "private, max-age=3600"})

    async def neighbours(request: Request) -> dict[str, Any]:
        item = item_of(request)
        result = await run_in_threadpool(state.neighbours, item, _int(request, "k", 12))
        return {"query": state.item(item), "neighbours": result}

    async def search(request: Request) -> dict[str, Any]:
        body = await read_json(request, MAX_UPLOAD_BYTES * 4 // 3 + 4096)
        text = body.get("image")
        if not isinstance(text, str):
            raise HTTPProblem(400, 'expected {"image": "<base64 of an image file>"}')
        if "," in text[:100] and text.startswith("data:"):
            text = text.split(",", 1)[1]  # a data: URL as FileReader gives it
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise HTTPProblem(400, "image is not valid base64") from None
        if len(data) > MAX_UPLOAD_BYTES:
            raise HTTPProblem(413, f"the image is over {MAX_UPLOAD_BYTES} bytes")
        if not state.info()["has_model"]:
            raise HTTPProblem(409, "this folder has no model (checkpoints/) to embed an uploaded image")
        vector = await run_in_threadpool(state.embed_upload, data)
        k = body.get("k", 12)
        if not isinstance(k, int) or isinstance(k, bool):
            raise HTTPProblem(400, "k must be an integer")
        return {"neighbours": await run_in_threadpool(state.neighbours_of_vector, vector, k)}

    async def map_points(request: Request) -> dict[str, Any]:
        return state.map_points()

    async def review(request: Request) -> dict[str, Any]:
        return {"items": state.review(_int(request, "limit", 40)), "choices": state.choices()}

    async def set_label(request: Request) -> dict[str, Any]:
        body = await read_json(request, MAX_JSON_BYTES)
        item, label = body.get("item"), body.get("label")
        if not isinstance(item, int) or isinstance(item, bool) or not (label is None or isinstance(label, str)):
            raise HTTPProblem(400, 'expected {"item": <row>, "label": "<class>" or null}')
        if not 0 <= item < state.n:
            raise HTTPProblem(404, f"item {item} is not a row of embeddings.npy (0..{state.n - 1})")
        count = await run_in_threadpool(state.set_label, item, label)
        return {"item": state.item(item), "corrections": count}

    async def respread(request: Request) -> dict[str, Any]:
        await read_json(request, MAX_JSON_BYTES)
        if state.respread_status()["running"]:
            raise HTTPProblem(409, "a re-spread is already running; wait for it (GET /api/respread/status)")
        return await run_in_threadpool(state.respread)

    async def respread_status(request: Request) -> dict[str, Any]:
        return state.respread_status()

    async def audit(request: Request) -> dict[str, Any]:
        await read_json(request, MAX_JSON_BYTES)
        return await run_in_threadpool(state.run_audit)

    routes = [
        Route("/", endpoint(page), methods=["GET"]),
        Route("/static/{name}", endpoint(static_file), methods=["GET"]),
        Route("/api/info", endpoint(info), methods=["GET"]),
        Route("/api/items", endpoint(items), methods=["GET"]),
        Route("/api/image/{row:int}", endpoint(image), methods=["GET"]),
        Route("/api/neighbours/{row:int}", endpoint(neighbours), methods=["GET"]),
        Route("/api/map", endpoint(map_points), methods=["GET"]),
        Route("/api/review", endpoint(review), methods=["GET"]),
        Route("/api/search", endpoint(search), methods=["POST"]),
        Route("/api/labels", endpoint(set_label), methods=["POST"]),
        Route("/api/respread", endpoint(respread), methods=["POST"]),
        Route("/api/respread/status", endpoint(respread_status), methods=["GET"]),
        Route("/api/audit", endpoint(audit), methods=["POST"]),
    ]
    return Guard(Starlette(routes=routes), token, allowed_hosts(host, port), port)

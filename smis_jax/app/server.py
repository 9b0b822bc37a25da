"""The editor's HTTP side: the standard library's threading HTTP server over one :class:`~smis_jax.app.editor.Editor`.

Routes (everything local; the page loads nothing from elsewhere):

    GET  /                     the page (static/index.html)
    GET  /static/<file>        its script and style sheet (package data, read once at start-up)
    GET  /api/info             domain, class names and colours, mask size, variants, example names
    GET  /api/example?name=N   an example mask as JSON class ids
    POST /api/update           {"mask": {width, height, ids}, "seed", "truncation"} -> image + variants (PNG base64)
    POST /api/refine           {"mask": {...}, "method", "steps"} -> the refined image (PNG base64), losses, ms
    POST /api/upload           a label PNG (raw body) -> JSON class ids, read as the pipeline reads masks
    POST /api/mask.png         {"mask": {...}} -> the mask as a grey PNG of class ids (the download)

Every refusal is a 4xx with ``{"error": "<one line>"}``; a body over its cap is refused from its Content-Length
before it is read. The handler never lets an exception escape a request, so the server keeps serving.
"""

from __future__ import annotations

import base64
import json
import sys
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, unquote, urlsplit

from smis_jax.app import editor as ed

__all__ = ["MAX_JSON_BYTES", "MAX_UPLOAD_BYTES", "make_server", "static_files"]

MAX_JSON_BYTES = 1 << 20  # a 256x256 mask is 87 KiB of base64
MAX_UPLOAD_BYTES = 4 << 20  # label PNGs are small (a 1024x1024 CelebAMask-HQ label is ~30 KiB)
_DRAIN_LIMIT = 32 << 20  # an oversized body up to this size is read and dropped so the client sees the 413
_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                  ".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}


def static_files() -> dict[str, bytes]:
    """The page's files (name -> bytes) from the package's ``static/`` folder."""
    folder = resources.files("smis_jax.app") / "static"
    files = {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")}
    if "index.html" not in files:
        raise FileNotFoundError(f"{folder}: the editor's index.html is missing (a broken install?)")
    return files


class _Handler(BaseHTTPRequestHandler):
    server_version = "smis-jax-editor"
    protocol_version = "HTTP/1.1"  # keep-alive: the page sends an update per pause in painting
    timeout = 30  # seconds a silent client may hold a thread

    # -- plumbing ---------------------------------------------------------------------------------------------
    @property
    def editor(self) -> ed.Editor:
        return self.server.editor  # type: ignore[attr-defined]

    def log_request(self, code="-", size="-"):  # nothing per request; _error logs each refusal in one line
        pass

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self.log_message("%s %s: %d %s", self.command, self.path[:100], status, message)
        self._json(status, {"error": message})

    def _body(self, cap: int) -> bytes:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise ed.InputError(411, "send the body with a Content-Length (chunked bodies are not accepted)")
        try:
            n = int(length)
        except (TypeError, ValueError):
            self.close_connection = True
            raise ed.InputError(411, "a request body needs a Content-Length header") from None
        if n < 0:
            self.close_connection = True
            raise ed.InputError(400, f"bad Content-Length {length!r}")
        if n > cap:
            self.close_connection = True
            if n <= _DRAIN_LIMIT:  # read and drop it, so the client is not cut off mid-send and sees the message
                while n > 0:
                    chunk = self.rfile.read(min(n, 1 << 16))
                    if not chunk:
                        break
                    n -= len(chunk)
            raise ed.InputError(413, f"request body of {int(length)} bytes is over the {cap}-byte limit")
        return self.rfile.read(n)

    def _guard(self, route) -> None:
        try:
            route()
        except ed.InputError as e:
            self._error(e.status, str(e))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # a bug: say so on the page, log the trace, keep serving
            traceback.print_exc()
            self._error(500, f"internal error: {type(e).__name__}: {e}")

    # -- routes ------------------------------------------------------------------------------------------------
    def do_GET(self):
        self._guard(self._get)

    def do_HEAD(self):
        self._guard(self._get)

    def do_POST(self):
        self._guard(self._post)

    def _get(self):
        url = urlsplit(self.path)
        files = self.server.static  # type: ignore[attr-defined]
        if url.path in ("/", "/index.html"):
            return self._send(200, files["index.html"], _CONTENT_TYPES[".html"])
        if url.path.startswith("/static/"):
            name = url.path[len("/static/"):]
            if name not in files:
                raise ed.InputError(404, f"no such file: {url.path}")
            suffix = name[name.rfind("."):]
            return self._send(200, files[name], _CONTENT_TYPES.get(suffix, "application/octet-stream"))
        if url.path == "/api/info":
            return self._json(200, self.editor.info())
        if url.path == "/api/example":
            name = parse_qs(url.query).get("name", [""])[0]
            return self._json(200, ed.ids_json(self.editor.example(name)))
        raise ed.InputError(404, f"no such page: {url.path}")

    def _post(self):
        path = urlsplit(self.path).path
        domain, size = self.editor.domain, self.editor.size
        if path == "/api/update":
            labels, seed, truncation = ed.parse_update(self._body(MAX_JSON_BYTES), domain, size)
            up = self.editor.update(labels, seed, truncation)
            b64 = base64.b64encode
            return self._json(200, {"image": b64(up.image).decode(), "variants": [b64(v).decode() for v in up.variants],
                                    "ms": round(up.ms, 1), "seed": seed, "truncation": truncation})
        if path == "/api/refine":
            labels, method, steps = ed.parse_refine(self._body(MAX_JSON_BYTES), domain, size)
            r = self.editor.refine(labels, method, steps)
            return self._json(200, {"image": base64.b64encode(r.image).decode(), "method": r.method,
                                    "steps": r.steps, "loss": list(r.loss), "ms": round(r.ms, 1)})
        if path == "/api/upload":
            name = unquote(self.headers.get("X-Filename") or "upload")  # the page percent-encodes it
            labels = ed.mask_from_png(self._body(MAX_UPLOAD_BYTES), domain, name[:200], size)
            return self._json(200, ed.ids_json(labels))
        if path == "/api/mask.png":
            labels = ed.parse_mask_request(self._body(MAX_JSON_BYTES), domain, size)
            return self._send(200, ed.mask_png_bytes(labels), "image/png",
                              {"Content-Disposition": 'attachment; filename="mask.png"'})
        self._body(MAX_JSON_BYTES)  # consume it: the connection stays usable
        raise ed.InputError(404, f"no such endpoint: POST {path}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client never blocks shutdown

    def handle_error(self, request, client_address):  # a client that vanished is not worth a trace
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def make_server(editor: ed.Editor, host: str = "127.0.0.1", port: int = 7860) -> ThreadingHTTPServer:
    """A server bound to (host, port) (port 0: an ephemeral one, see ``server.server_address``); not yet serving."""
    server = _Server((host, port), _Handler)
    server.editor = editor  # type: ignore[attr-defined]
    server.static = static_files()  # type: ignore[attr-defined]
    return server

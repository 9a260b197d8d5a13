"""`llm-deploy web ARTIFACT`: a static file server for the in-browser chat page.

The replies are computed in the visitor's browser (runtime/engine.js on WebGPU); this server only
answers GETs: the page and its modules under /web/, the artifact's files under /artifact/, and
/web-config.json (where the artifact is, and a version that keys the browser's cache of it).
Every request is recorded in `requests` so tests can check that no inference endpoint exists.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from llm_deploy.runtime.artifact import ArtifactError, is_artifact

WEB_DIR = Path(__file__).parent
STATIC_SUFFIXES = {".html", ".js", ".mjs", ".css"}
TYPES = {
    ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css", ".html": "text/html",
    ".json": "application/json", ".wgsl": "text/plain", ".safetensors": "application/octet-stream",
}  # fmt: skip


def artifact_version(folder: Path) -> str:
    """A fingerprint of the artifact's files (names, sizes, times): a rebuild changes it."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _inside(root: Path, rel: str) -> Path | None:
    path = (root / rel).resolve()
    return path if path.is_file() and path.is_relative_to(root.resolve()) else None


class WebServer:
    """Serves the page and `artifact` on host:port (port 0: any free one) in a background thread."""

    def __init__(self, artifact: str | Path, host: str = "127.0.0.1", port: int = 0, quiet: bool = True):
        self.artifact = Path(artifact)
        if not is_artifact(self.artifact):
            raise ArtifactError(
                f"{artifact} is not an artifact folder (manifest.json and executable.json expected)"
            )
        manifest = json.loads((self.artifact / "manifest.json").read_text())
        if manifest.get("target") != "webgpu":
            raise ArtifactError(
                f"{artifact} was built for --target {manifest.get('target')}; the browser runs webgpu "
                f"artifacts: llm-deploy build --model {manifest.get('model', 'MODEL')} --target webgpu"
            )
        self.config = {
            "artifact": "/artifact/",
            "version": artifact_version(self.artifact),
            "model": manifest["model"],
        }
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self.httpd = ThreadingHTTPServer((host, port), self._handler(quiet))
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def _handler(self, quiet: bool) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self._serve(body=True)

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def _refuse(self) -> None:
                self._reply(
                    HTTPStatus.METHOD_NOT_ALLOWED, b"only GET: this server computes nothing\n", "text/plain"
                )

            do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

            def _serve(self, body: bool) -> None:
                path = self.path.split("?", 1)[0].split("#", 1)[0]
                file, cache = None, "no-cache"
                if path in ("/", "/index.html"):
                    file = WEB_DIR / "local.html"
                elif path == "/web-config.json":
                    data = json.dumps(server.config).encode()
                    return self._reply(HTTPStatus.OK, data, "application/json", body=body)
                elif path.startswith("/web/"):
                    file = _inside(WEB_DIR, path[len("/web/") :])
                    if file is not None and file.suffix not in STATIC_SUFFIXES:
                        file = None
                elif path.startswith("/artifact/"):
                    # the page keeps these in the browser's Cache API, keyed by the version
                    file = _inside(server.artifact, path[len("/artifact/") :])
                    cache = "no-store"
                if file is None:
                    return self._reply(
                        HTTPStatus.NOT_FOUND, f"no file at {path}\n".encode(), "text/plain", body=body
                    )
                self._reply(
                    HTTPStatus.OK,
                    file.read_bytes(),
                    TYPES.get(file.suffix)
                    or mimetypes.guess_type(file.name)[0]
                    or "application/octet-stream",
                    cache,
                    body,
                )

            def _reply(
                self, status, data: bytes, ctype: str, cache: str = "no-cache", body: bool = True
            ) -> None:
                server.requests.append((self.command, self.path, int(status)))
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", cache)
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def log_message(self, format: str, *args) -> None:
                if not quiet:
                    super().log_message(format, *args)

        return Handler

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def __enter__(self) -> WebServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

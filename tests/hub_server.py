"""A fake Hugging Face Hub on loopback: answers what the real `huggingface_hub` client calls for
`create_repo` + `create_commit`, and records every request, so tests assert on what would be uploaded.

Every file is answered `uploadMode: regular` at preupload, so its bytes travel base64-encoded inside the
NDJSON commit body: no LFS or Xet storage is involved, and the commit request alone holds the upload.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
ROUTES = {
    ("GET", re.compile(r"/api/agent-harnesses")): "agent_harnesses",  # the client's user-agent telemetry, once a day
    ("POST", re.compile(r"/api/repos/create")): "create",
    ("POST", re.compile(r"/api/validate-yaml")): "validate_yaml",
    ("POST", re.compile(rf"/api/models/{REPO}/preupload/(?P<revision>[^/]+)")): "preupload",
    ("POST", re.compile(rf"/api/models/{REPO}/commit/(?P<revision>[^/]+)")): "commit",
}


@dataclass
class Request:
    method: str
    path: str  # without the query string
    headers: dict[str, str]  # lower-case names
    body: bytes
    status: int  # what the fake answered

    def json(self):
        return json.loads(self.body)


class FakeHub:
    """`with FakeHub.running() as hub:`; `hub.endpoint` goes into HF_ENDPOINT; `hub.fail_with = 401` makes
    every request fail with that status (and an error message that echoes the request's credentials, as a
    careless proxy would, so tests can prove the client side never shows them)."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.fail_with: int | None = None
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @classmethod
    @contextmanager
    def running(cls) -> Iterator[FakeHub]:
        hub = cls()
        thread = threading.Thread(target=hub._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield hub
        finally:
            hub._server.shutdown()
            hub._server.server_close()
            thread.join()

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
        self.fail_with = None

    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def named(self, route: str) -> list[Request]:
        """The recorded requests that matched one route ("create", "preupload", "commit", ...)."""
        return [r for r in self.requests if _route(r.method, r.path)[0] == route]

    def committed_files(self) -> dict[str, bytes]:
        """{path in repo: content} from the single recorded commit's NDJSON body."""
        (commit,) = self.named("commit")
        files = {}
        for line in commit.body.splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                assert item["value"]["encoding"] == "base64", item["value"]
                files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            else:
                assert item["key"] == "header", f"unexpected commit operation {item['key']}: only inline files are answered"
        return files


def _route(method: str, path: str) -> tuple[str | None, dict[str, str]]:
    for (route_method, pattern), name in ROUTES.items():
        match = pattern.fullmatch(path)
        if method == route_method and match:
            return name, match.groupdict()
    return None, {}


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's signature
            """Silent: the recorded requests are the log."""

        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def _serve(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = self.path.split("?", 1)[0]
            route, params = _route(self.command, path)
            if hub.fail_with:
                status, answer = hub.fail_with, {"error": f"refused credentials: {self.headers.get('Authorization')}"}
            elif route is None:
                status, answer = 404, {"error": f"the fake Hub has no {self.command} {path}"}
            else:
                payload = body if route == "commit" else json.loads(body) if body else None
                status, answer = 200, getattr(self, route)(payload, **params)
            headers = {k.lower(): v for k, v in self.headers.items()}
            hub.record(Request(self.command, path, headers, body, status))
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def agent_harnesses(self, payload: None) -> dict:
            return {"standardEnvVars": [], "harnesses": {}}

        def create(self, payload: dict) -> dict:
            repo = f"{payload['organization']}/{payload['name']}"
            return {"url": f"{hub.endpoint}/{repo}", "name": repo, "id": repo}

        def validate_yaml(self, payload: dict) -> dict:
            return {"errors": [], "warnings": []}

        def preupload(self, payload: dict, repo: str, revision: str) -> dict:
            return {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in payload["files"]]}

        def commit(self, body: bytes, repo: str, revision: str) -> dict:
            oid = "0123456789abcdef0123456789abcdef01234567"
            return {"success": True, "commitOid": oid, "commitUrl": f"{hub.endpoint}/{repo}/commit/{oid}"}

    return Handler

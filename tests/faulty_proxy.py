"""An HTTP proxy in front of a real server that can fail on purpose (500s, lost answers) or answer
a path itself (an Enterprise-only endpoint, built from the vendor's published API reference).

Tests put it between a connector and the real Label Studio to produce the failures a network and
a loaded server produce: a 500 before the request reaches the server, or an answer lost after
the server applied the request. Everything else is forwarded byte for byte.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests


@dataclass
class Fault:
    method: str
    path_part: str
    times: int  # how many matching requests fail (-1 = all)
    status: int = 500
    after_forward: bool = False  # True: the server applies the request, the answer is lost


class FaultyProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults: list[Fault] = []
        self.overrides: list[tuple[str, str, Callable[[bytes], tuple[int, object]]]] = []
        self.seen: list[tuple[str, str, int]] = []  # (method, path, status returned)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                for method, part, answer in proxy.overrides:
                    if method == self.command and part in self.path:
                        status, payload = answer(body)
                        return self._answer(
                            status, json.dumps(payload).encode(), {"Content-Type": "application/json"}
                        )
                fault = proxy._take(self.command, self.path)
                if fault and not fault.after_forward:
                    return self._answer(fault.status, b'{"detail": "injected failure"}', {})
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")
                }
                r = requests.request(
                    self.command, proxy.upstream + self.path, headers=headers, data=body, timeout=120
                )
                if fault:
                    return self._answer(fault.status, b'{"detail": "injected: answer lost"}', {})
                keep = {"content-type", "date"}
                self._answer(
                    r.status_code, r.content, {k: v for k, v in r.headers.items() if k.lower() in keep}
                )

            def _answer(self, status: int, content: bytes, headers: dict[str, str]) -> None:
                with proxy._lock:
                    proxy.seen.append((self.command, self.path, status))
                self.send_response(status)
                for k, v in headers.items():
                    if k.lower() != "date":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def override(self, method: str, path_part: str, answer: Callable[[bytes], tuple[int, object]]) -> None:
        """Answer matching requests here (a feature the real server lacks); ``answer(body)`` gives
        (status, JSON payload)."""
        self.overrides.append((method, path_part, answer))

    def fail(self, method: str, path_part: str, times: int = 1, **kw: object) -> None:
        with self._lock:
            self.faults.append(Fault(method, path_part, times, **kw))  # type: ignore[arg-type]

    def _take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.method == method and f.path_part in path and f.times != 0:
                    f.times -= 1 if f.times > 0 else 0
                    return f
        return None

    def count(self, method: str, path_part: str, status: int | None = None) -> int:
        with self._lock:
            return sum(
                1
                for m, p, s in self.seen
                if m == method and path_part in p and (status is None or s == status)
            )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

"""A tiny OpenAI-compatible chat-completions server for tests, on 127.0.0.1.

    with OpenAIStub([Reply.error(429), Reply.ok("hello")]) as stub:
        ... api_base=stub.api_base ...   # http://127.0.0.1:PORT/v1
        assert len(stub.requests) == 2

Each POST to /v1/chat/completions takes the next scripted `Reply`; when the script runs out the
last reply repeats. Reasoning-style models (`REASONING_MODELS`, or the `reasoning_models` given)
refuse `temperature` as OpenAI's reasoning models refuse one they do not take: HTTP 400 with
OpenAI's error body, `param: "temperature"`, without taking a reply. Every request (path, headers, JSON body) is kept in `stub.requests`; its
headers are looked up case-insensitively, as HTTP headers are (clients differ in the case they
send: `Authorization` or `authorization`).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REASONING_MODELS = frozenset({"gpt-5", "gpt-5-mini", "o3", "stub-reasoner"})
"""Model names (as sent in the request body) that answer a `temperature` with a 400. The first
three are ones litellm knows as reasoning models; `stub-reasoner` is one it does not know."""


def unsupported_temperature(model: str) -> Reply:
    """OpenAI's answer to a reasoning model asked for a temperature."""
    payload = {
        "error": {
            "message": (
                f"Unsupported parameter: 'temperature' is not supported with this model ({model})."
            ),
            "type": "invalid_request_error",
            "param": "temperature",
            "code": "unsupported_parameter",
        }
    }
    return Reply(400, json.dumps(payload).encode())


class Headers(Mapping[str, str]):
    """A request's headers, read-only, with case-insensitive names."""

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        self._items = {name.lower(): value for name, value in items}

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def ok(
        cls,
        text: str,
        prompt_tokens: int = 11,
        completion_tokens: int = 7,
        model: str = "test-model",
    ) -> Reply:
        payload = {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        return cls(200, json.dumps(payload).encode())

    @classmethod
    def error(cls, status: int, message: str = "stub error") -> Reply:
        payload = {"error": {"message": message, "type": "stub", "code": status}}
        headers = {"retry-after": "0"} if status == 429 else {}
        return cls(status, json.dumps(payload).encode(), headers=headers)

    @classmethod
    def raw(cls, body: bytes, status: int = 200) -> Reply:
        return cls(status, body)

    @classmethod
    def empty_choices(cls) -> Reply:
        payload = {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "test-model",
            "choices": [],
        }
        return cls(200, json.dumps(payload).encode())

    @classmethod
    def empty_content(cls) -> Reply:
        reply = cls.ok("")
        payload = json.loads(reply.body)
        payload["choices"][0]["message"]["content"] = None
        return cls(200, json.dumps(payload).encode())

    @classmethod
    def slow(cls, delay_s: float, then: Reply | None = None) -> Reply:
        base = then or cls.ok("late")
        return cls(base.status, base.body, delay_s, dict(base.headers))


class OpenAIStub:
    def __init__(
        self, replies: list[Reply], reasoning_models: Iterable[str] = REASONING_MODELS
    ) -> None:
        self.replies = list(replies)
        self.reasoning_models = frozenset(reasoning_models)
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output clean
                return

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("content-length", 0))
                body = self.rfile.read(length)
                reply = stub._take(self.path, Headers(self.headers.items()), body)
                if reply.delay_s and stub._closing.wait(reply.delay_s):
                    return
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(reply.body)))
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    return  # the client gave up (timeout test)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def _take(self, path: str, headers: Headers, body: bytes) -> Reply:
        request = json.loads(body or b"{}")
        with self._lock:
            self.requests.append({"path": path, "headers": headers, "json": request})
            if "temperature" in request and request.get("model") in self.reasoning_models:
                return unsupported_temperature(request["model"])
            return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]

    @property
    def api_base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> OpenAIStub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()

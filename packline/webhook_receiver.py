"""A merchant's webhook endpoint, as the demo runs it: verifies every Standard Webhooks signature."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["WebhookReceiver"]

Verifier = Callable[[str, Mapping[str, str], bytes], None]


@dataclass
class ReceivedHook:
    tenant: str
    webhook_id: str
    type: str
    data: dict[str, object]


@dataclass
class WebhookReceiver:
    """``POST /hooks/<tenant>``; ``secrets`` maps tenant -> ``whsec_...``; ``verify`` raises on a bad signature."""

    verify: Verifier
    secrets: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    verified: list[ReceivedHook] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                tenant = self.path.rstrip("/").rsplit("/", 1)[-1]
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                secret = receiver.secrets.get(tenant)
                try:
                    if secret is None:
                        raise ValueError(f"no secret for tenant {tenant!r}")
                    receiver.verify(secret, headers, body)
                    event = json.loads(body)
                except Exception as e:
                    with receiver._lock:
                        receiver.failed.append(f"{tenant}: {e}")
                    self.send_response(400)
                    self.end_headers()
                    return
                with receiver._lock:
                    receiver.verified.append(
                        ReceivedHook(tenant, headers.get("webhook-id", ""), str(event.get("type")), event.get("data", {}))
                    )
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:  # keep stderr for the demo's own logs
                return

        self._server = ThreadingHTTPServer((self.host, 0), Handler)
        threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True).start()
        return self

    def url_for(self, tenant: str) -> str:
        assert self._server is not None
        return f"http://{self.host}:{self._server.server_address[1]}/hooks/{tenant}"

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def counts(self) -> dict[str, int]:
        """Verified deliveries by event type, each webhook-id counted once."""
        with self._lock:
            seen = {(h.webhook_id, h.type) for h in self.verified}
        return dict(Counter(t for _id, t in seen))

    def shipped_order_ids(self) -> set[str]:
        with self._lock:
            return {str(h.data.get("order_id")) for h in self.verified if h.type == "order.shipped"}

    def unique_ids(self) -> int:
        with self._lock:
            return len({h.webhook_id for h in self.verified})

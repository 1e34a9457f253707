"""Server-Sent Events responses that notice a client leaving at once, not at the next write.

The body is an async iterator of ready-made events (see `event`); `on_close` runs when the stream ends for
any reason (finished, client gone, server stopping), which is where a route frees what the stream held.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Callable, Optional

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send


async def until_disconnect(receive: Receive) -> None:
    """Return once the client has gone (after the request body, ASGI's receive() waits for that)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def event(data: Any, name: Optional[str] = None) -> str:
    """One SSE event; `data` is sent as JSON unless it is already a string."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return (f"event: {name}\n" if name else "") + f"data: {text}\n\n"


class EventStream(Response):
    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], None] = lambda: None):
        self.events, self.on_close = events, on_close
        self.status_code, self.background = 200, None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            async with anyio.create_task_group() as group:

                async def cancel_on_disconnect() -> None:
                    await until_disconnect(receive)
                    group.cancel_scope.cancel()

                group.start_soon(cancel_on_disconnect)
                try:
                    async for chunk in self.events:
                        await send({"type": "http.response.body", "body": chunk.encode(), "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                except OSError:  # the client went away while we wrote
                    pass
                group.cancel_scope.cancel()
        finally:
            self.on_close()
            close = getattr(self.events, "aclose", None)
            if close is not None:
                await close()

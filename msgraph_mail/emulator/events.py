"""Server-sent events for the dev inbox: the page learns of new mail without polling.

Each open page holds one ``GET /api/events`` (an ``EventSource``): the emulator pushes
``message`` (a message arrived), ``request`` (a request was answered) and ``faults`` (the
armed faults changed). Every subscriber has its own bounded queue, so a stalled page never
holds up the emulator: when its queue is full it misses events and is told to ``reload``.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from collections.abc import Iterator
from typing import Any

#: Events a stalled page may fall behind by before it is told to reload instead.
QUEUE_SIZE = 1000
#: Seconds between keep-alive comments on an idle stream (proxies close silent ones).
KEEP_ALIVE = 15.0
_CLOSED = object()


class EventHub:
    """Fan-out of events to the open streams; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[queue.Queue[Any]] = []
        self._closed = False

    def publish(self, event: str, data: dict[str, Any]) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        if not subscribers:  # no page open: every request pays nothing more
            return
        frame = f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()
        for subscriber in subscribers:
            # a full queue misses the event; its stream is told to reload (see stream())
            with contextlib.suppress(queue.Full):
                subscriber.put_nowait(frame)

    def stream(self) -> Iterator[bytes]:
        """The frames of one subscriber until the hub closes; a comment when idle."""
        subscriber: queue.Queue[Any] = queue.Queue(QUEUE_SIZE)
        with self._lock:
            if self._closed:
                return
            self._subscribers.append(subscriber)
        try:
            yield b"retry: 2000\n\n"  # the browser's reconnect delay, should the stream drop
            while True:
                try:
                    frame = subscriber.get(timeout=KEEP_ALIVE)
                except queue.Empty:
                    yield b": keep-alive\n\n"
                    continue
                if frame is _CLOSED:
                    return
                yield frame
                if subscriber.full():
                    yield b"event: reload\ndata: {}\n\n"
                    return
        finally:
            with self._lock:
                if subscriber in self._subscribers:
                    self._subscribers.remove(subscriber)

    def open(self) -> None:
        """Accept streams again (the emulator starts after a stop)."""
        with self._lock:
            self._closed = False

    def close(self) -> None:
        """End every stream (the emulator stops)."""
        with self._lock:
            self._closed = True
            subscribers, self._subscribers = list(self._subscribers), []
        for subscriber in subscribers:
            # a full one ends at its next write, on the socket the server cuts
            with contextlib.suppress(queue.Full):
                subscriber.put_nowait(_CLOSED)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subscribers)

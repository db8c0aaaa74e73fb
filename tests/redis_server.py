"""A throwaway redis-server on a free loopback port, for the tests of the shared limits.

No persistence (``--save "" --appendonly no``), its files in a temporary directory, stopped
when the block ends::

    with RedisServer() as server:
        server.url  # "redis://127.0.0.1:PORT/0"
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

#: Where Debian's package puts the server when it is not on PATH.
FALLBACK = "/usr/bin/redis-server"


def find_redis_server() -> str | None:
    """The redis-server executable, or None when it is not installed."""
    found = shutil.which("redis-server")
    if found:
        return found
    return FALLBACK if Path(FALLBACK).is_file() else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ping(port: int, timeout: float = 0.5) -> bool:
    """Whether a Redis server answers PING on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """redis-server in a subprocess; ``url`` once started."""

    def __init__(self, executable: str | None = None, startup_timeout: float = 15.0) -> None:
        executable = executable or find_redis_server()
        if executable is None:
            raise FileNotFoundError("redis-server is not installed")
        self.executable = executable
        self.startup_timeout = startup_timeout
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._directory: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        self._directory = tempfile.TemporaryDirectory(prefix="msgraph-redis-")
        directory = self._directory.name
        for _ in range(3):  # another process may take the free port first
            self.port = free_port()
            options = {
                "--port": str(self.port),
                "--bind": "127.0.0.1",
                "--save": "",  # no snapshots
                "--appendonly": "no",
                "--dir": directory,
                "--logfile": str(Path(directory) / "redis.log"),
            }
            self._process = subprocess.Popen(  # noqa: S603 -- a fixed executable and arguments
                [self.executable, *(part for pair in options.items() for part in pair)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + self.startup_timeout
            while time.monotonic() < deadline and self._process.poll() is None:
                if ping(self.port):
                    return self.url
                time.sleep(0.02)
            self._stop_process()
        log = Path(directory) / "redis.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING:\n{tail}")

    def stop(self) -> None:
        self._stop_process()
        if self._directory is not None:
            self._directory.cleanup()
            self._directory = None

    def _stop_process(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

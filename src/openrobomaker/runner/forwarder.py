"""Byte pipes that let apps inside a job's network namespace reach the API on the host's loopback.

    inside the job netns                      runner (host netns)
    app --TCP--> 127.0.0.1:<api port> ==unix socket in workDir==> TCP to apiEndpoint.url

A unix socket path is reachable from any network namespace; TCP on the host's 127.0.0.1 is not.
The namespace side runs as `python forwarder.py tcp-to-unix PORT SOCKET` (standard library only);
the host side is `UnixToTcpForwarder`, a thread in the runner. Both cap concurrent connections.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from collections.abc import Callable

MAX_CONNECTIONS = 64
CONNECT_TIMEOUT_SECONDS = 5.0
IDLE_TIMEOUT_SECONDS = 300.0
_CHUNK = 64 * 1024


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(_CHUNK)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def splice(client: socket.socket, upstream: socket.socket) -> None:
    """Copy both directions until both sides have closed; closes both sockets."""
    for sock in (client, upstream):
        sock.settimeout(IDLE_TIMEOUT_SECONDS)
    back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
    back.start()
    _pump(client, upstream)
    back.join()
    client.close()
    upstream.close()


class _Forwarder:
    """Accepts on `listener`; for each client opens `connect_upstream()` and splices the two."""

    def __init__(self, listener: socket.socket, connect_upstream: Callable[[], socket.socket]):
        self.listener = listener
        self.connect_upstream = connect_upstream
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self.serve, name="api-forwarder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def serve(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                if self._closed.is_set():
                    return
                continue
            if not self.slots.acquire(blocking=False):
                client.close()  # over the cap: refuse rather than queue without bound
                continue
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        try:
            try:
                upstream = self.connect_upstream()
            except OSError:
                client.close()
                return
            splice(client, upstream)
        finally:
            self.slots.release()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


class UnixToTcpForwarder(_Forwarder):
    """Host side: listens on a unix socket, connects each client to host:port."""

    def __init__(self, socket_path: str, host: str, port: int):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(socket_path)
        os.chmod(socket_path, 0o600)  # only the job (same uid, or root mapped to it) may use the bridge
        listener.listen(MAX_CONNECTIONS)
        self.socket_path = socket_path
        super().__init__(listener, lambda: socket.create_connection((host, port), CONNECT_TIMEOUT_SECONDS))

    def close(self) -> None:
        super().close()
        with contextlib.suppress(OSError):
            os.unlink(self.socket_path)


class ListenerToTcpForwarder(_Forwarder):
    """A thread of the runner: `listener` was opened inside the job's network namespace (by its holder), and
    each client is connected to host:port from the runner, which stays in the host's namespace. No unix
    socket and no forwarder process are needed."""

    def __init__(self, listener: socket.socket, host: str, port: int):
        super().__init__(listener, lambda: socket.create_connection((host, port), CONNECT_TIMEOUT_SECONDS))


def _connect_unix(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT_SECONDS)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    sock.settimeout(None)
    return sock


def serve_tcp_to_unix(port: int, socket_path: str) -> None:
    """Namespace side: 127.0.0.1:port -> unix socket, until killed."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(MAX_CONNECTIONS)
    print(f"forwarding 127.0.0.1:{port} -> {socket_path}", flush=True)
    _Forwarder(listener, lambda: _connect_unix(socket_path)).serve()


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "tcp-to-unix":
        # The runner stops it with SIGINT when the job ends: a normal exit, not a traceback.
        with contextlib.suppress(KeyboardInterrupt):
            serve_tcp_to_unix(int(argv[1]), argv[2])
        return 0
    print("usage: forwarder.py tcp-to-unix PORT SOCKET", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

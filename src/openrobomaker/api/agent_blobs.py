"""Bundle bytes for robot agents, sent by the kernel (`sendfile`) from a small listener beside the API.

uvicorn gives an ASGI app no access to its sockets, so every byte the agent channel streams goes through
Python: a read into a buffer, the ASGI send loop, a transport write. For a wave of robots fetching a large
bundle from the local object store that is most of the server's CPU. So the channel, once it has
authenticated the robot and found its bundle, answers `307` to this listener with a short-lived ticket
(`/blob?t=TICKET`), as it answers with a presigned URL for S3 stores; here a worker thread per connection
hands the file to the kernel with `sendfile`, and Python never touches the bytes.

A ticket is a random token, valid for TICKET_SECONDS and only for the one file (and only while that file
is the one the channel saw: same inode, size and mtime; objects are replaced by rename, never rewritten).
It is what a presigned URL is: whoever holds it may read that object until it expires, so only the
authenticated robot the bundle is for gets one. `Range: bytes=N-` resumes. Anything unexpected is an
error answer, and the agent falls back to streaming through the channel (`direct=0`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import struct
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

TICKET_SECONDS = 60.0
MAX_TICKETS = 100_000
PURGE_AT = 1024  # expired tickets are dropped when the table doubles past this (and its last size)
# A wave of robots connects at once; the socketserver default backlog (5) would make the kernel drop SYNs
# and the robots' TCP stacks retry a second later.
BACKLOG = 1024
SOCKET_TIMEOUT = 60.0
# Each connection's thread runs at this nice: Linux shares CPU per thread, and a wave of 50 sendfile
# threads at the event loop's priority would leave it ~1/50 of a core for the polls and reports that keep
# the rollout moving. Bulk bytes yield to control traffic; alone on the CPU they still go at full speed.
SEND_NICE = 10


@dataclass(frozen=True)
class Ticket:
    path: str
    identity: tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns when the ticket was made
    etag: str
    expires: float  # time.monotonic()


def _identity(stat: os.stat_result) -> tuple[int, int, int, int]:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


class _Handler(BaseHTTPRequestHandler):
    server: _Listener
    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT

    def setup(self) -> None:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, SEND_NICE)  # Linux: 0 is this thread, not the process
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # a log line per bundle fetch would be noise; the agent journals where each download came from

    def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        body = orjson.dumps({"__type": code, "message": message})
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("x-amzn-ErrorType", code)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        parts = urlsplit(self.path)
        token = parse_qs(parts.query).get("t", [""])[0]
        ticket = self.server.blobs.ticket(token) if parts.path == "/blob" else None
        if ticket is None:
            self._error(
                403, "AccessDeniedException", "no such ticket, or it expired: ask the agent channel again"
            )
            return
        try:
            handle = open(ticket.path, "rb")  # noqa: SIM115 - closed below, after sendfile
        except OSError:
            self._error(410, "ResourceNotFoundException", "the object is gone: ask the agent channel again")
            return
        with handle:
            if _identity(os.fstat(handle.fileno())) != ticket.identity:
                self._error(
                    410, "ResourceNotFoundException", "the object changed: ask the agent channel again"
                )
                return
            self._send(handle, ticket)

    def _send(self, handle: Any, ticket: Ticket) -> None:
        size = ticket.identity[2]
        start = _range_start(self.headers.get("Range"))
        if start > size or (start == size and size):
            self._error(
                416, "InvalidRange", "the range starts after the end", {"Content-Range": f"bytes */{size}"}
            )
            return
        self.send_response(206 if start else 200)
        self.send_header("ETag", f'"{ticket.etag}"')
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        with contextlib.suppress(OSError):  # the agent went away: it resumes with a Range request
            _sendfile_blocking(self.connection, handle, start, size - start)


def _sendfile_blocking(sock: socket.socket, handle: Any, offset: int, count: int) -> None:
    """`count` bytes of the file to the socket in as few `sendfile` calls as the kernel allows. A socket
    with a Python timeout is non-blocking underneath: `socket.sendfile` then sends one socket buffer per
    call and waits in `select` in between, a GIL hand-off each time against the API's event loop (~80 per
    20 MB bundle). Blocking, with the kernel's own send timeout in place of Python's, one call mostly does
    it; a peer that stops reading for SOCKET_TIMEOUT ends it with EAGAIN (an OSError) all the same."""
    sock.settimeout(None)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", int(SOCKET_TIMEOUT), 0))
    while count > 0:
        sent = os.sendfile(sock.fileno(), handle.fileno(), offset, count)
        if not sent:
            return  # the file is shorter than it was: the agent's size or hash check catches it
        offset, count = offset + sent, count - sent


def _range_start(header: str | None) -> int:
    if not header or not header.startswith("bytes=") or not header.endswith("-"):
        return 0
    start = header[len("bytes=") : -1]
    return int(start) if start.isdigit() else 0


class _Listener(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = BACKLOG
    blobs: AgentBlobs


class _Listener6(_Listener):
    address_family = socket.AF_INET6


class AgentBlobs:
    """The listener and its tickets. Started on first use; `url()` is safe from any thread."""

    def __init__(self, host: str, port: int = 0):
        self._host = host
        self._port = port  # 0: any free port (fixed ports are for sites that firewall the robots' traffic)
        self._tickets: dict[str, Ticket] = {}
        self._purge_at = PURGE_AT
        self._lock = threading.Lock()
        self._listener: _Listener | None = None

    @property
    def port(self) -> int | None:
        return self._listener.server_address[1] if self._listener else None

    def _started(self) -> _Listener:
        with self._lock:
            if self._listener is None:
                listener = (_Listener6 if ":" in self._host else _Listener)(
                    (self._host, self._port), _Handler
                )
                listener.blobs = self
                threading.Thread(target=listener.serve_forever, name="agent-blobs", daemon=True).start()
                self._listener = listener
            return self._listener

    def url(self, public_host: str, path: Path, etag: str) -> str:
        """A URL that serves `path` (as it is now) for TICKET_SECONDS."""
        listener = self._started()
        ticket = Ticket(str(path), _identity(path.stat()), etag, time.monotonic() + TICKET_SECONDS)
        token = secrets.token_urlsafe(24)
        with self._lock:
            if len(self._tickets) >= self._purge_at:
                self._purge()
            self._tickets[token] = ticket
        host = f"[{public_host}]" if ":" in public_host else public_host
        return f"http://{host}:{listener.server_address[1]}/blob?t={token}"

    def ticket(self, token: str) -> Ticket | None:
        ticket = self._tickets.get(token)
        if ticket is None or time.monotonic() > ticket.expires:
            return None
        return ticket

    def _purge(self) -> None:
        now = time.monotonic()
        for token in [t for t, ticket in self._tickets.items() if now > ticket.expires]:
            del self._tickets[token]
        while len(self._tickets) >= MAX_TICKETS:  # all still valid: drop the oldest
            self._tickets.pop(next(iter(self._tickets)))
        self._purge_at = max(PURGE_AT, 2 * len(self._tickets))

    def close(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.shutdown()
            listener.server_close()

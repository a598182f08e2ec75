"""One HTTP/1.1 GET whose body goes straight into a file: the agent's downloads (bundles, condition files).

Why not httpx, which the agent uses for its control requests: a robot spends most of a deployment's CPU on
the bundle's bytes, and through httpx each MiB costs 6-9 ms of a core (Python-level chunking and copies).
Here the body is received into one reused 256 KiB buffer and, while that is still in the CPU's cache,
hashed (the caller's digest) and written: ~3 ms per MiB, most of it MD5. Tried: moving the bytes with
`splice` (socket -> pipe -> file) saved no CPU in the deployment benchmark (the kernel's copy into the page
cache is most of receive + write) and leaves the bytes to be read again for the hash.

Only what downloads need: GET, `Connection: close` (one connection per download, so nothing can be left
half-read on a pooled connection), `Content-Length`, chunked or until-close bodies, `Range` resume, HTTP
and HTTPS proxies from the environment as httpx honours them. Redirects are returned, not followed: the
caller decides which headers (its SigV4 signature) may go to the new location.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import struct
import urllib.request
from base64 import b64encode
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

# a redirect's or an error's body is read for its message, never more than this
MAX_SMALL_BODY = 64 * 1024
MAX_HEAD = 64 * 1024
BUFFER_BYTES = 256 * 1024  # fits in L2: the received bytes are written from cache

Progress = Callable[[int, int], None]  # (bytes in the file so far, bytes it will hold; 0 if unknown)
# (offset the body starts at) -> a hashlib object holding the file's bytes before it, updated with the body
Digest = Callable[[int], Any]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    url: str
    body: bytes = (
        b""  # a non-2xx answer's body (an error's message, a redirect's text); a 2xx one is in the file
    )
    size: int = 0  # a 2xx answer: the file's size once the body is in


def get(
    url: str,
    headers: dict[str, str],
    dest: Path,
    start: int = 0,
    timeout: float = 60.0,
    progress: Progress | None = None,
    digest: Digest | None = None,
) -> Answer:
    """GET `url`; a 2xx body goes into `dest` from byte `start` (`Range` asked when `start` > 0; a server
    that answers 200 instead rewrites the file from its beginning) and through `digest` (made fresh by
    `digest(offset)` for the offset the body starts at). A connection lost mid-body raises OSError with
    what arrived kept in the file, so that the caller can resume after it."""
    with _connect(url, timeout) as (sock, target, proxy_headers):
        request = {"Range": f"bytes={start}-"} if start else {}
        _send_request(sock, url, target, {**headers, **proxy_headers, **request})
        reader = _Reader(sock)
        status, answer_headers = reader.read_head()
        answer = Answer(status, answer_headers, url)
        if not 200 <= status < 300:
            answer.body = reader.read_small_body(answer_headers)
            return answer
        offset = _content_range_start(answer_headers) if status == 206 else 0
        if offset is None or offset > start:
            raise ConnectionError(f"{without_query(url)} answered a range we did not ask for")
        hasher = digest(offset) if digest is not None else None
        answer.size = reader.read_body_into(dest, offset, answer_headers, _FileSink(progress, hasher))
        return answer


def without_query(url: str) -> str:
    """The URL as it may be logged: a presigned URL's query is its signature."""
    return url.split("?", 1)[0]


# --- connecting ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _connect(url: str, timeout: float):
    """A connected (and for https, TLS-wrapped) blocking socket, the request target to send on it, and
    the headers a plain-HTTP proxy wants with the request."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {without_query(url)}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    proxy = _proxy_for(parts.scheme, parts.hostname)
    proxy_headers: dict[str, str] = {}
    sock = socket.create_connection(proxy[:2] if proxy else (parts.hostname, port), timeout=timeout)
    try:
        if proxy and parts.scheme == "https":
            _tunnel(sock, parts.hostname, port, proxy[2])
        elif proxy:
            target, proxy_headers = url, proxy[2]  # a plain-HTTP proxy takes the absolute URL
        if parts.scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=parts.hostname)
        _block_with_timeouts(sock, timeout)
        yield sock, target, proxy_headers
    finally:
        sock.close()


def _block_with_timeouts(sock: socket.socket, timeout: float) -> None:
    """Blocking mode with the kernel's own receive and send timeouts: MSG_WAITALL fills a whole buffer
    only on a blocking descriptor (a Python socket timeout makes it non-blocking), and a silent peer must
    still not be waited for forever."""
    if isinstance(sock, ssl.SSLSocket):
        sock.settimeout(timeout)  # TLS reads go through Python's socket layer anyway
        return
    sock.settimeout(None)
    seconds = struct.pack("ll", int(timeout), int((timeout % 1) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, seconds)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, seconds)


def _proxy_for(scheme: str, host: str) -> tuple[str, int, dict[str, str]] | None:
    """The environment's proxy for this URL (HTTP_PROXY, HTTPS_PROXY, NO_PROXY, as httpx reads them)."""
    proxy = urllib.request.getproxies().get(scheme)
    if not proxy or urllib.request.proxy_bypass(host):
        return None
    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if not parts.hostname:
        return None
    headers = {}
    if parts.username:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Proxy-Authorization"] = "Basic " + b64encode(credentials).decode()
    return parts.hostname, parts.port or 80, headers


def _tunnel(sock: socket.socket, host: str, port: int, proxy_headers: dict[str, str]) -> None:
    lines = [f"CONNECT {host}:{port} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{name}: {value}" for name, value in proxy_headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    reader = _Reader(sock)
    status, _ = reader.read_head()
    if status != 200 or reader.pending:
        raise ConnectionError(f"the proxy refused the tunnel to {host}:{port} ({status})")


def _send_request(sock: socket.socket, url: str, target: str, headers: dict[str, str]) -> None:
    host = urlsplit(url).netloc.rsplit("@", 1)[-1]
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host}",
        "Connection: close",
        "Accept-Encoding: identity",
        "User-Agent: openrobomaker-agent",
    ]
    lines += [f"{name}: {value}" for name, value in headers.items() if name.lower() != "host"]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))


def _content_range_start(headers: dict[str, str]) -> int | None:
    """`bytes 100-199/200` → 100."""
    unit, _, rest = headers.get("content-range", "").partition(" ")
    first = rest.split("-", 1)[0]
    return int(first) if unit == "bytes" and first.isdigit() else None


# --- reading the answer --------------------------------------------------------------------------------


class _Reader:
    """The answer on one socket: the head through a small buffer, then the body into one reused buffer
    (or, chunked, through the small one)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.pending = b""  # bytes received past what has been consumed

    def read_head(self) -> tuple[int, dict[str, str]]:
        while (end := self.pending.find(b"\r\n\r\n")) < 0:
            if len(self.pending) > MAX_HEAD:
                raise ConnectionError("the answer's head is too large")
            self._receive_more("the answer's head")
        head, self.pending = self.pending[:end].decode("latin-1"), self.pending[end + 4 :]
        status_line, *header_lines = head.split("\r\n")
        fields = status_line.split(" ", 2)
        if len(fields) < 2 or not fields[0].startswith("HTTP/1.") or not fields[1].isdigit():
            raise ConnectionError(f"not an HTTP/1.x answer: {status_line[:80]!r}")
        headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        status = int(fields[1])
        if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
            return self.read_head()
        return status, headers

    def read_small_body(self, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = bytearray()
            self._read_chunks(lambda data: body.extend(data[: MAX_SMALL_BODY - len(body)]))
            return bytes(body)
        length = int(headers.get("content-length", "-1"))
        wanted = MAX_SMALL_BODY if length < 0 else min(length, MAX_SMALL_BODY)
        while len(self.pending) < wanted and self._receive_more(None):
            pass
        return self.pending[:wanted]

    def read_body_into(self, dest: Path, offset: int, headers: dict[str, str], sink: _FileSink) -> int:
        """Write the body into `dest` from `offset` (the file cut there first). Returns the file's size."""
        length = int(headers.get("content-length", "-1"))
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        sink.total = offset + length if length >= 0 and not chunked else 0
        with _open_at(dest, offset) as out:
            sink.out = out
            if chunked:
                self._read_chunks(sink.write)
            else:
                self._read_plain(sink, length)
            return out.tell()

    def _read_plain(self, sink: _FileSink, length: int) -> None:
        """A `Content-Length` body (or, with length -1, one that ends when the server closes)."""
        first, self.pending = self.pending[: length if length >= 0 else None], b""
        sink.write(first)
        remaining = length - len(first) if length >= 0 else -1
        if remaining:
            self._receive_into(sink, remaining)

    def _receive_into(self, sink: _FileSink, remaining: int) -> None:
        view = memoryview(bytearray(BUFFER_BYTES))
        # a whole buffer per call where the socket allows (TLS sockets take no flags)
        flags = 0 if isinstance(self.sock, ssl.SSLSocket) else socket.MSG_WAITALL
        while remaining:
            wanted = BUFFER_BYTES if remaining < 0 else min(remaining, BUFFER_BYTES)
            count = self.sock.recv_into(view, wanted, flags)
            if not count:
                if remaining < 0:
                    return  # the body ends where the connection does
                raise ConnectionError(f"connection lost with {remaining} bytes of the body to go")
            sink.write(view[:count])
            remaining = remaining - count if remaining > 0 else remaining

    def _read_chunks(self, write: Callable[[bytes], None]) -> None:
        while True:
            size_line = self._read_line()
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self._read_line():  # trailers, up to the empty line
                    pass
                return
            while len(self.pending) < size + 2:
                self._receive_more("a chunk")
            write(self.pending[:size])
            self.pending = self.pending[size + 2 :]

    def _read_line(self) -> bytes:
        while (end := self.pending.find(b"\r\n")) < 0:
            if len(self.pending) > MAX_HEAD:
                raise ConnectionError("a chunk's size line is too long")
            self._receive_more("a chunk's size")
        line, self.pending = self.pending[:end], self.pending[end + 2 :]
        return line

    def _receive_more(self, needed_for: str | None) -> bool:
        data = self.sock.recv(BUFFER_BYTES)
        if not data:
            if needed_for is None:
                return False
            raise ConnectionError(f"connection closed before {needed_for}")
        self.pending += data
        return True


@contextlib.contextmanager
def _open_at(dest: Path, offset: int):
    """`dest` open for writing at `offset`, unbuffered (each 256 KiB piece is written as it comes, no
    second copy). Never truncated to zero: ext4 takes a file truncated to zero for one being replaced and
    writes it out to disk when closed (`auto_da_alloc`), which made every download ~15 ms slower to finish
    and the disk busy; a fresh file starts from nothing anyway."""
    if offset == 0:
        dest.unlink(missing_ok=True)
    with open(dest, "r+b" if offset else "wb", buffering=0) as out:
        if os.fstat(out.fileno()).st_size > offset:
            out.truncate(offset)
        out.seek(offset)
        yield out


class _FileSink:
    """Where the body goes: the file, the caller's digest and progress callback."""

    def __init__(self, progress: Progress | None, digest: Any):
        self.progress, self.digest = progress, digest
        self.out: Any = None
        self.total = 0

    def write(self, data) -> None:
        if not data:
            return
        if self.digest is not None:
            self.digest.update(data)
        view = memoryview(data)
        while view:
            view = view[self.out.write(view) :]
        if self.progress is not None:
            self.progress(self.out.tell(), self.total)

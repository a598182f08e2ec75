"""The agent's download client (agent/fetch.py): what reaches the file, from every kind of HTTP answer a
bundle can come in, and what is kept when the connection drops."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from openrobomaker.agent import fetch

BODY = os.urandom(3 * 1024 * 1024 + 12345)  # several pipe-fulls, not a multiple of anything


class RawServer:
    """A loopback server whose every connection is answered by `respond(request_head, connection)`."""

    def __init__(self, respond: Callable[[str, socket.socket], None], tls: ssl.SSLContext | None = None):
        self.respond, self.tls = respond, tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(65536)
                if not data:
                    return
                head += data
            self.requests.append(head.decode("latin-1"))
            self.respond(head.decode("latin-1"), conn)
        except OSError:
            pass
        finally:
            conn.close()

    def url(self, path: str = "/bundle", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.listener.close()


@pytest.fixture()
def servers():
    started: list[RawServer] = []

    def start(respond, tls=None) -> RawServer:
        server = RawServer(respond, tls)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def _range_start(head: str) -> int:
    for line in head.split("\r\n"):
        if line.lower().startswith("range: bytes="):
            return int(line.split("=", 1)[1].split("-", 1)[0])
    return 0


def serve_body(body: bytes = BODY, honour_range: bool = True, etag: str = "abc"):
    def respond(head: str, conn: socket.socket) -> None:
        start = _range_start(head) if honour_range else 0
        status = "206 Partial Content" if start else "200 OK"
        extra = f"Content-Range: bytes {start}-{len(body) - 1}/{len(body)}\r\n" if start else ""
        conn.sendall(
            f'HTTP/1.1 {status}\r\nContent-Length: {len(body) - start}\r\nETag: "{etag}"\r\n{extra}\r\n'.encode()
            + body[start:]
        )

    return respond


def test_body_reaches_the_file_with_progress(servers, tmp_path):
    server = servers(serve_body())
    seen: list[tuple[int, int]] = []
    digest = hashlib.md5()
    answer = fetch.get(
        server.url(),
        {"X-Test": "yes"},
        tmp_path / "b",
        progress=lambda r, t: seen.append((r, t)),
        digest=lambda offset: digest,
    )
    assert answer.status == 200 and answer.headers["etag"] == '"abc"' and answer.size == len(BODY)
    assert (tmp_path / "b").read_bytes() == BODY
    assert digest.hexdigest() == hashlib.md5(BODY).hexdigest()  # every byte hashed once, in order
    assert seen[-1] == (len(BODY), len(BODY)) and [r for r, _ in seen] == sorted(r for r, _ in seen)
    request = server.requests[0]
    assert request.startswith("GET /bundle HTTP/1.1\r\n") and "X-Test: yes" in request
    assert "Range:" not in request and "Connection: close" in request


def test_resume_asks_for_the_rest_and_appends(servers, tmp_path):
    server = servers(serve_body())
    dest = tmp_path / "b"
    dest.write_bytes(BODY[:1000])
    offsets: list[int] = []
    digest = hashlib.md5(BODY[:1000])
    answer = fetch.get(
        server.url(), {}, dest, start=1000, digest=lambda offset: offsets.append(offset) or digest
    )
    assert answer.status == 206 and dest.read_bytes() == BODY
    assert offsets == [1000] and digest.hexdigest() == hashlib.md5(BODY).hexdigest()
    assert "Range: bytes=1000-" in server.requests[0]


def test_a_server_ignoring_range_rewrites_the_file(servers, tmp_path):
    server = servers(serve_body(honour_range=False))
    dest = tmp_path / "b"
    dest.write_bytes(b"x" * 5000)  # not even the right bytes: a 200 starts over
    offsets: list[int] = []
    answer = fetch.get(
        server.url(), {}, dest, start=5000, digest=lambda offset: offsets.append(offset) or hashlib.md5()
    )
    assert answer.status == 200 and dest.read_bytes() == BODY and offsets == [0]


def test_a_dropped_connection_keeps_what_arrived_for_the_resume(servers, tmp_path):
    cut = 2 * 1024 * 1024 + 7

    def drop_midway(head: str, conn: socket.socket) -> None:
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(BODY)}\r\n\r\n".encode() + BODY[:cut])

    dest = tmp_path / "b"
    with pytest.raises(ConnectionError, match="bytes of the body to go"):
        fetch.get(servers(drop_midway).url(), {}, dest)
    assert dest.read_bytes() == BODY[:cut]
    fetch.get(servers(serve_body()).url(), {}, dest, start=cut)
    assert dest.read_bytes() == BODY


def test_chunked_and_until_close_bodies(servers, tmp_path):
    def chunked(head: str, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for offset in range(0, len(BODY), 700_001):
            piece = BODY[offset : offset + 700_001]
            conn.sendall(b"%x;ext=1\r\n" % len(piece) + piece + b"\r\n")
        conn.sendall(b"0\r\nX-Trailer: t\r\n\r\n")

    def until_close(head: str, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + BODY)

    for respond in (chunked, until_close):
        dest = tmp_path / respond.__name__
        answer = fetch.get(servers(respond).url(), {}, dest)
        assert answer.status == 200 and dest.read_bytes() == BODY, respond.__name__


def test_error_and_redirect_answers_leave_the_file_alone(servers, tmp_path):
    def not_found(head: str, conn: socket.socket) -> None:
        body = b'{"message": "no such bundle"}'
        conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    def redirect(head: str, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 307 Temporary Redirect\r\nLocation: /x\r\n\r\n")

    dest = tmp_path / "b"
    dest.write_bytes(b"previous")
    missing = fetch.get(servers(not_found).url(), {}, dest, start=8)
    assert missing.status == 404 and missing.body == b'{"message": "no such bundle"}'
    moved = fetch.get(servers(redirect).url(), {}, dest, start=8)
    assert moved.status == 307 and moved.headers["location"] == "/x"
    assert dest.read_bytes() == b"previous"


def test_a_range_we_did_not_ask_for_is_refused(servers, tmp_path):
    def wrong_range(head: str, conn: socket.socket) -> None:
        conn.sendall(
            b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 50-99/100\r\nContent-Length: 50\r\n\r\n"
        )
        conn.sendall(b"y" * 50)

    dest = tmp_path / "b"
    dest.write_bytes(b"x" * 10)
    with pytest.raises(ConnectionError, match="range we did not ask for"):
        fetch.get(servers(wrong_range).url(), {}, dest, start=10)
    assert dest.read_bytes() == b"x" * 10


def test_a_silent_server_times_out(servers, tmp_path):
    release = threading.Event()

    def stall(head: str, conn: socket.socket) -> None:
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(BODY)}\r\n\r\n".encode() + BODY[:1000])
        release.wait(10)

    server = servers(stall)
    try:
        with pytest.raises(OSError):
            fetch.get(server.url(), {}, tmp_path / "b", timeout=0.5)
        assert (tmp_path / "b").read_bytes() == BODY[:1000]
    finally:
        release.set()


def _self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context, cert_path


def test_https_with_the_systems_trust_and_resume(servers, tmp_path, monkeypatch):
    context, cert_path = _self_signed(tmp_path)
    server = servers(serve_body(), tls=context)
    with pytest.raises(ssl.SSLCertVerificationError):  # not trusted: refused, nothing written
        fetch.get(server.url(scheme="https"), {}, tmp_path / "untrusted")
    assert not (tmp_path / "untrusted").exists()
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_path))  # as a robot's operator points at a private CA
    dest = tmp_path / "b"
    dest.write_bytes(BODY[:777])
    answer = fetch.get(server.url(scheme="https"), {}, dest, start=777)
    assert answer.status == 206 and dest.read_bytes() == BODY


def test_http_proxy_from_the_environment(servers, tmp_path, monkeypatch):
    proxy = servers(serve_body())  # answers as the proxy would, after forwarding
    monkeypatch.setenv("HTTP_PROXY", f"http://robot:s%40cret@127.0.0.1:{proxy.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("http_proxy", raising=False)
    url = "http://bundles.example:8080/app/bundle.tar?X-Amz-Signature=abc"
    fetch.get(url, {}, tmp_path / "b")
    assert (tmp_path / "b").read_bytes() == BODY
    request = proxy.requests[0]
    assert request.startswith(f"GET {url} HTTP/1.1\r\n") and "Host: bundles.example:8080" in request
    assert "Proxy-Authorization: Basic cm9ib3Q6c0BjcmV0" in request  # robot:s@cret
    direct = servers(serve_body(b"not through the proxy"))
    monkeypatch.setenv("NO_PROXY", "localhost")
    fetch.get(f"http://localhost:{direct.port}/bundle", {}, tmp_path / "c")
    assert (tmp_path / "c").read_bytes() == b"not through the proxy"
    assert len(proxy.requests) == 1 and direct.requests[0].startswith("GET /bundle HTTP/1.1")


def test_https_through_a_connect_proxy(servers, tmp_path, monkeypatch):
    context, cert_path = _self_signed(tmp_path)
    origin = servers(serve_body(), tls=context)

    def tunnel(head: str, conn: socket.socket) -> None:
        """A CONNECT proxy: checks the credentials, then relays bytes both ways."""
        target = head.split(" ", 2)[1]
        assert target == f"127.0.0.1:{origin.port}" and "Proxy-Authorization: Basic" in head
        upstream = socket.create_connection(("127.0.0.1", origin.port))
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")

        def pump(source: socket.socket, sink: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := source.recv(65536):
                    sink.sendall(data)
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

        back = threading.Thread(target=pump, args=(upstream, conn), daemon=True)
        back.start()
        pump(conn, upstream)
        back.join(10)
        upstream.close()

    proxy = servers(tunnel)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_path))
    monkeypatch.setenv("HTTPS_PROXY", f"http://robot:pw@127.0.0.1:{proxy.port}")
    for name in ("NO_PROXY", "no_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    answer = fetch.get(origin.url(scheme="https"), {}, tmp_path / "b")
    assert answer.status == 200 and (tmp_path / "b").read_bytes() == BODY
    assert len(proxy.requests) == 1 and proxy.requests[0].startswith("CONNECT 127.0.0.1:")

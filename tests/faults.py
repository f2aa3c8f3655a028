"""Misbehaving HTTP servers on 127.0.0.1 for the download tests and the fuzzer: closed, silent, drip, 500.

Each is a real socket server in a daemon thread; `FaultServer.stop()` closes it and every connection it holds.
The drip server answers HEAD like a Hub file endpoint (commit, etag, size), so huggingface_hub gets as far
as the body, which then comes one byte per `interval` seconds.
"""

from __future__ import annotations

import socket
import threading

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FaultServer:
    """mode: "silent" (accepts, reads the request, never answers), "drip" (headers at once, then the body
    one byte per `interval` s), "drip-headers" (the status line and headers themselves one byte per `interval`
    s: no read ever times out and no body byte ever arrives), "500" (an HTTP 500 with a short body)."""

    def __init__(self, mode: str, size: int = 1000, interval: float = 1.0):
        assert mode in ("silent", "drip", "drip-headers", "500")
        self.mode, self.size, self.interval = mode, size, interval
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.stopped = threading.Event()
        self.conns: list[socket.socket] = []
        self.requests = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            while not self.stopped.is_set():
                request = b""
                while b"\r\n\r\n" not in request:
                    data = conn.recv(4096)
                    if not data:
                        return
                    request += data
                self.requests += 1
                method = request.split(b" ", 1)[0]
                if self.mode == "silent":
                    self.stopped.wait()
                    return
                if self.mode == "500":
                    body = b'{"error": "internal error"}'
                    conn.sendall(
                        b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), b"" if method == b"HEAD" else body)
                    )
                    continue
                if request.split(b" ", 2)[1].startswith(b"/api/"):  # huggingface_hub's side requests
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    continue
                headers = (
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                    b'Content-Length: %d\r\nETag: "e%d"\r\nX-Repo-Commit: %s\r\n\r\n'
                    % (self.size, self.size, COMMIT.encode())
                )
                if self.mode == "drip-headers":
                    for byte in headers:
                        if self.stopped.wait(self.interval):
                            return
                        conn.sendall(bytes([byte]))
                conn.sendall(headers)
                if method == b"HEAD":
                    continue
                for _ in range(self.size):
                    if self.stopped.wait(self.interval):
                        return
                    conn.sendall(b"x")
        except OSError:
            return
        finally:
            conn.close()

    def stop(self) -> None:
        self.stopped.set()
        self.sock.close()
        for conn in self.conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def __enter__(self) -> FaultServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""Plain-URL downloads against real misbehaving servers on 127.0.0.1: each ends in seconds with a HubError
saying what happened, and leaves no file behind."""

from __future__ import annotations

import hashlib
import http.server
import threading
import time

import pytest

from tests.faults import FaultServer, closed_port
from zoo.errors import HubError, IntegrityError
from zoo.net import Transfer, deadline_for, download


@pytest.fixture
def fast(monkeypatch):
    monkeypatch.setenv("ZOO_HUB_TIMEOUT", "1")
    monkeypatch.setenv("ZOO_DOWNLOAD_BASE", "1")
    monkeypatch.setenv("ZOO_DOWNLOAD_MIN_RATE", "100")


def _refused(url, dest, pattern, **kwargs) -> float:
    start = time.monotonic()
    with pytest.raises(HubError, match=pattern):
        download(url, dest, **kwargs)
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()
    return time.monotonic() - start


def test_closed_port_is_refused_at_once(fast, tmp_path):
    assert _refused(f"http://127.0.0.1:{closed_port()}/w.pth", tmp_path / "w.pth", "could not connect") < 3


def test_silent_server_ends_after_the_read_timeout(fast, tmp_path):
    with FaultServer("silent") as server:
        assert _refused(server.url + "/w.pth", tmp_path / "w.pth", "did not answer within 1 s") < 4


def test_drip_ends_at_the_deadline_for_its_size(fast, tmp_path):
    # 1000 bytes at >= 100 B/s plus 1 s: the deadline is 11 s, but one byte a second falls under the floor
    # rate as soon as the base second is over; the per-read timeout (1 s) never fires.
    with FaultServer("drip", size=1000, interval=0.3) as server:
        elapsed = _refused(server.url + "/w.pth", tmp_path / "w.pth", "too slow", expected_size=1000)
    assert elapsed < 5


def test_drip_of_unknown_size_ends_by_the_floor_rate(fast, tmp_path):
    with FaultServer("drip", size=1000, interval=0.3) as server:
        assert _refused(server.url + "/w.pth", tmp_path / "w.pth", "too slow") < 5


def test_http_500_names_the_status(fast, tmp_path):
    with FaultServer("500") as server:
        _refused(server.url + "/w.pth", tmp_path / "w.pth", "HTTP 500 Internal Server Error")


def test_watchdog_ends_a_wait_no_read_timeout_sees(monkeypatch, tmp_path):
    # Headers one byte every 0.3 s keep every read under the 10 s read timeout and no body chunk is ever
    # counted; only the overall deadline (1 s + 10 bytes / 5 B/s = 3 s) ends it.
    monkeypatch.setenv("ZOO_DOWNLOAD_BASE", "1")
    monkeypatch.setenv("ZOO_DOWNLOAD_MIN_RATE", "5")
    with FaultServer("drip-headers", size=10, interval=0.3) as server:
        start = time.monotonic()
        with pytest.raises(HubError, match="too slow"):
            download(server.url + "/w.pth", tmp_path / "w.pth", expected_size=10)
        assert time.monotonic() - start < 5


class _Files(http.server.BaseHTTPRequestHandler):
    body = b"weights" * 1000

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def files_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_verifies_size_and_digest(fast, files_server, tmp_path):
    body = _Files.body
    dest = download(files_server + "/w.pth", tmp_path / "w.pth", len(body), sha256=hashlib.sha256(body).hexdigest())
    assert dest.read_bytes() == body
    _refused(files_server + "/w.pth", tmp_path / "x.pth", "7000 bytes, more than the 10 expected", expected_size=10)
    with pytest.raises(IntegrityError, match="sha256"):
        download(files_server + "/w.pth", tmp_path / "y.pth", sha256="00" * 32)
    assert not (tmp_path / "y.pth").exists()


def test_deadline_grows_with_the_size(fast):
    assert deadline_for(1000) == pytest.approx(1 + 1000 / 100)
    transfer = Transfer("x", 100)
    transfer.advance(100)  # on time: no error
    assert transfer.received == 100

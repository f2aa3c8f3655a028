"""Downloads with deadlines: every wait on the network ends, and the error says what happened.

One set of rules for the Hub (`zoo.hub`, through huggingface_hub) and for plain URLs (`download`): a
connect or a silent read fails after `read_timeout()`, and a whole transfer of S expected bytes after
`base_seconds() + S / min_rate()`, however the bytes trickle in (a watchdog, not a per-read timeout).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from zoo.errors import HubError, IntegrityError

T = TypeVar("T")

DEFAULT_READ_TIMEOUT = 10.0  # seconds to connect, or to wait for the next bytes
DEFAULT_MIN_RATE = 64 * 1024  # bytes per second: the slowest transfer accepted
DEFAULT_BASE = 30.0  # seconds added to every deadline: connection set-up, redirects, a slow first byte
MAX_DOWNLOAD_BYTES = 2 << 30  # a download whose size is unknown is refused past this many bytes


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise HubError(f"{name}={raw!r} is not a number") from None
    if not value > 0:
        raise HubError(f"{name}={raw!r} must be positive")
    return value


def read_timeout() -> float:
    """Seconds to wait for a connection or for the next bytes (ZOO_HUB_TIMEOUT, default 10)."""
    return _env_number("ZOO_HUB_TIMEOUT", DEFAULT_READ_TIMEOUT)


def min_rate() -> float:
    """The slowest accepted transfer in bytes per second (ZOO_DOWNLOAD_MIN_RATE, default 64 KiB/s)."""
    return _env_number("ZOO_DOWNLOAD_MIN_RATE", DEFAULT_MIN_RATE)


def base_seconds() -> float:
    """Seconds every download deadline starts with (ZOO_DOWNLOAD_BASE, default 30)."""
    return _env_number("ZOO_DOWNLOAD_BASE", DEFAULT_BASE)


def deadline_for(expected_size: int | None) -> float:
    """Seconds a download of `expected_size` bytes may take in all; an unknown size counts as the largest
    download accepted (`MAX_DOWNLOAD_BYTES`), and the average-rate check of `Transfer` ends it sooner."""
    size = MAX_DOWNLOAD_BYTES if expected_size is None else max(0, int(expected_size))
    return base_seconds() + size / min_rate()


class Transfer:
    """One download's clock: its deadline, the bytes received so far, and a flag the watchdog sets when
    the caller has given up (the worker stops at its next chunk)."""

    def __init__(self, what: str, expected_size: int | None = None, seconds: float | None = None):
        self.what = what
        self.expected_size = expected_size
        self.by_size = seconds is None
        self.seconds = deadline_for(expected_size) if seconds is None else seconds
        self.started = time.monotonic()
        self.received = 0
        self.cancelled = threading.Event()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def remaining(self) -> float:
        return self.seconds - self.elapsed()

    def advance(self, n: int) -> None:
        """Count n more bytes; raise HubError when the deadline passed or the average rate (after the base
        seconds) fell under the floor."""
        self.received += n
        if self.cancelled.is_set():
            raise HubError(f"{self.what}: cancelled after its deadline")
        elapsed = self.elapsed()
        if elapsed > self.seconds or self.received < (elapsed - base_seconds()) * min_rate():
            raise HubError(self.expired())

    def expired(self) -> str:
        elapsed = self.elapsed()
        if not self.by_size:
            return f"{self.what} did not finish within {self.seconds:g} s"
        arrived = f" ({self.received} bytes arrived)" if self.received else ""
        size = "of unknown size" if self.expected_size is None else f"of {self.expected_size} bytes"
        rate = min_rate()
        speed = f"{rate:g} B/s" if rate < 1024 else f"{rate / 1024:g} KiB/s"
        return (
            f"{self.what} was too slow: not done after {elapsed:.1f} s{arrived}; a download {size} may take "
            f"{base_seconds():g} s plus its size at {speed} (ZOO_DOWNLOAD_BASE, ZOO_DOWNLOAD_MIN_RATE)"
        )


def run_with_deadline(fn: Callable[[], T], transfer: Transfer) -> T:
    """fn() in a worker thread, given up on with HubError once `transfer` runs out of time.

    A per-read timeout does not end a server that sends one byte a second, and a blocking read cannot be
    interrupted from outside; so the caller stops waiting at the deadline and the worker is flagged to stop at
    its next chunk (it is a daemon thread: it never keeps the process alive)."""
    box: dict[str, object] = {}

    def work() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed to the caller as is
            box["error"] = exc

    worker = threading.Thread(target=work, name=f"zoo-download {transfer.what}"[:60], daemon=True)
    worker.start()
    worker.join(max(0.0, transfer.remaining()))
    if worker.is_alive():
        transfer.cancelled.set()
        raise HubError(transfer.expired())
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


def download(
    url: str,
    dest: str | Path,
    expected_size: int | None = None,
    *,
    sha256: str | None = None,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
) -> Path:
    """Download a plain http(s) URL to `dest` under the same deadline rules as the Hub; returns `dest`.

    The file appears at `dest` only when complete (and, with `sha256`, verified); a status other than 200, a
    refused or silent connection, a size other than `expected_size` or over `max_bytes`, and a transfer past
    its deadline raise HubError (IntegrityError for a wrong digest) saying which."""
    dest = Path(dest)
    if not url.startswith(("http://", "https://")):
        raise HubError(f"{url!r} is not an http(s) URL")
    limit = max_bytes if expected_size is None else min(int(expected_size), max_bytes)
    transfer = Transfer(url, expected_size if expected_size is not None else None)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)

    def fetch() -> str:
        digest = hashlib.sha256()
        request = urllib.request.Request(url, headers={"User-Agent": "zoo"})
        answered = False
        try:
            with urllib.request.urlopen(request, timeout=read_timeout()) as response, open(part, "wb") as out:
                answered = True
                declared = response.headers.get("Content-Length")
                if declared is not None and declared.isdigit() and int(declared) > limit:
                    raise HubError(f"{url} is {declared} bytes, more than the {limit} expected")
                announced = int(declared) if declared is not None and declared.isdigit() else expected_size
                while chunk := response.read1(1 << 16):  # what has arrived, not a full buffer
                    if transfer.received + len(chunk) > limit:
                        raise HubError(f"{url} sent more than the {limit} bytes expected")
                    transfer.advance(len(chunk))
                    digest.update(chunk)
                    out.write(chunk)
        except urllib.error.HTTPError as exc:
            raise HubError(f"{url} answered HTTP {exc.code} {exc.reason}".rstrip()) from None
        except http.client.IncompleteRead:  # the connection closed before the size the server announced
            raise HubError(f"{url} ended after {transfer.received} bytes, before the size it announced") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError):
                raise HubError(f"{url} did not answer within {read_timeout():g} s (ZOO_HUB_TIMEOUT)") from None
            raise HubError(f"could not connect to {url}: {getattr(reason, 'strerror', None) or reason}") from None
        except TimeoutError:
            if not answered:
                raise HubError(f"{url} did not answer within {read_timeout():g} s (ZOO_HUB_TIMEOUT)") from None
            raise HubError(
                f"{url} sent nothing for {read_timeout():g} s after {transfer.received} bytes (ZOO_HUB_TIMEOUT)"
            ) from None
        except OSError as exc:  # reset connections, a full disk
            raise HubError(f"downloading {url} failed after {transfer.received} bytes: {exc}") from None
        if announced is not None and transfer.received != announced:
            raise HubError(f"{url} ended after {transfer.received} of {announced} bytes")
        return digest.hexdigest()

    try:
        digest = run_with_deadline(fetch, transfer)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    if sha256 is not None and digest != sha256.lower():
        part.unlink(missing_ok=True)
        raise IntegrityError(f"{url} has sha256 {digest[:16]}…, expected {sha256[:16]}…; nothing was kept")
    os.replace(part, dest)
    return dest

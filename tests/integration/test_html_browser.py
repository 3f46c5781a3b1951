"""report.html in a real headless chromium: no console error, no request outside the file, every image decoded.

The browser is driven through the DevTools protocol with a minimal WebSocket client written here on
the standard library (no browser-automation dependency). Skipped, with the reason, where Debian's
chromium is not installed (`apt-get install -y chromium`).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from lab import run_folder as rf
from lab.report.writer import write_report

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "run-cpu-tiny"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# ENVIRONMENT.md: without the background-networking flags chromium keeps trying to reach outside hosts.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed: apt-get install -y chromium")


class WebSocket:
    """Just enough of RFC 6455 for the DevTools protocol: text frames, client-masked, no extensions."""

    def __init__(self, url: str, timeout: float = 30):
        host, port, path = re.match(r"ws://([^:/]+):(\d+)(/.*)", url).groups()
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        response = b""
        while b"\r\n\r\n" not in response:
            response += self.sock.recv(4096)
        assert response.startswith(b"HTTP/1.1 101"), response[:200]
        self.buffer = response.split(b"\r\n\r\n", 1)[1]

    def send(self, text: str) -> None:
        payload, mask = text.encode(), os.urandom(4)
        n = len(payload)
        header = bytes([0x81]) + (
            bytes([0x80 | n])
            if n < 126
            else bytes([0x80 | 126]) + struct.pack(">H", n)
            if n < 65536
            else bytes([0x80 | 127]) + struct.pack(">Q", n)
        )
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def recv(self) -> str:
        message = b""
        while True:
            first, second = self._read(2)
            n = second & 0x7F
            n = (
                struct.unpack(">H", self._read(2))[0]
                if n == 126
                else struct.unpack(">Q", self._read(8))[0]
                if n == 127
                else n
            )
            payload = self._read(n)
            if first & 0x0F == 0x8:
                raise ConnectionError("the browser closed the DevTools connection")
            message += payload
            if first & 0x80:  # FIN: the last fragment
                return message.decode()

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("DevTools connection closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data


def load_in_chromium(page: Path, tmp_path: Path) -> dict:
    """Open `page` in headless chromium; return its console errors, outside requests and image states."""
    proc = subprocess.Popen(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = _devtools_port(proc)
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        ws = WebSocket(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
        calls = iter(range(1, 1000))

        def call(method: str, **params) -> int:
            number = next(calls)
            ws.send(json.dumps({"id": number, "method": method, "params": params}))
            return number

        for domain in ("Runtime", "Log", "Network", "Page"):
            call(f"{domain}.enable")
        call("Page.navigate", url=page.as_uri())
        errors, requests, check_id, deadline = [], [], None, time.monotonic() + 30
        while time.monotonic() < deadline:
            event = json.loads(ws.recv())
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                errors.append(f"{details.get('text')} {details.get('exception', {}).get('description', '')}")
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                errors.append(str(params.get("args")))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                errors.append(params["entry"].get("text"))
            elif method == "Network.requestWillBeSent":
                requests.append(params["request"]["url"])
            elif method == "Network.loadingFailed":
                errors.append(f"loading failed: {params.get('errorText')}")
            elif method == "Page.loadEventFired":
                check_id = call(
                    "Runtime.evaluate",
                    returnByValue=True,
                    expression=(
                        "JSON.stringify({images: [...document.images]"
                        ".map(i => [i.alt, i.complete && i.naturalWidth > 0]),"
                        " tables: document.querySelectorAll('table').length,"
                        " details: document.querySelectorAll('details').length, title: document.title})"
                    ),
                )
            elif check_id is not None and event.get("id") == check_id:
                page_state = json.loads(event["result"]["result"]["value"])
                return {"errors": errors, "requests": requests, **page_state}
        raise TimeoutError("the page did not finish loading within 30 s")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _devtools_port(proc: subprocess.Popen) -> int:
    for line in proc.stderr:
        found = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
        if found:
            return int(found.group(1))
    raise RuntimeError(f"chromium exited (code {proc.wait()}) without opening its DevTools port")


@pytest.fixture()
def report_page(tmp_path: Path) -> Path:
    run_dir = tmp_path / FIXTURE.name
    shutil.copytree(FIXTURE, run_dir)
    write_report(run_dir)
    return rf.RunFolder(run_dir).html_report


def test_report_html_loads_without_console_errors(report_page: Path, tmp_path: Path):
    state = load_in_chromium(report_page, tmp_path)
    assert state["errors"] == []
    outside = [u for u in state["requests"] if not u.startswith(("file:", "data:"))]
    assert outside == [], f"report.html must be self-contained; it asked for {outside}"
    assert state["images"] and all(ok for _, ok in state["images"]), state["images"]
    assert state["tables"] >= 3 and state["details"] == 2
    assert state["title"].startswith("PagedAttention Lab run")


def test_the_browser_check_sees_a_script_error(tmp_path: Path):
    """The harness itself: a page that throws and links a missing image must be reported, not pass."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><title>x</title><img alt="gone" src="missing.png"><script>undefinedFunction()</script>',
        encoding="utf-8",
    )
    state = load_in_chromium(page, tmp_path)
    assert any("undefinedFunction" in (e or "") for e in state["errors"])
    assert any("ERR_FILE_NOT_FOUND" in (e or "") for e in state["errors"])
    assert state["images"] == [["gone", False]]

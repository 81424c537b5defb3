"""Headless Chromium for the dashboard tests: start it, drive one page over the DevTools protocol,
take screenshots. Shared by tests/ops/test_dashboard_browser.py and the live study test
(tests/studies/test_study_embedded.py)."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
NO_CHROMIUM = "needs Debian's chromium (apt-get install -y chromium)"
# Screenshots stay in the checkout after a run (.ci/run included): tests/ops/screenshots/ (git-ignored).
SCREENSHOTS = Path(__file__).parent / "screenshots"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2, trust_env=False).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not come up")


class CDP:
    """The few DevTools-protocol calls the tests need, over the page's websocket."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=64 * 1024 * 1024)
        self.next_id = 0

    def send(self, method: str, **params):
        self.next_id += 1
        msg_id = self.next_id
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def eval(self, expr: str, await_promise: bool = False):
        res = self.send("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=await_promise)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expr}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def wait_for(self, expr: str, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.eval(expr)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {expr!r} (last value {value!r})")

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def full_page_screenshot(self, path: Path) -> None:
        """The whole page, not only the window (up to 6000 px tall)."""
        height = self.eval("Math.ceil(document.documentElement.scrollHeight)")
        self.send("Emulation.setDeviceMetricsOverride", width=1400, height=min(int(height), 6000), deviceScaleFactor=1,
                  mobile=False)
        try:
            self.screenshot(path)
        finally:
            self.send("Emulation.clearDeviceMetricsOverride")
        assert path.stat().st_size > 10_000

    def sign_in(self, url: str, key: str) -> None:
        """Open the dashboard at ``url`` and give it the API key through its form."""
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && !!document.querySelector('#key-form')")
        self.eval(f"document.querySelector('#api-key').value = {json.dumps(key)}; "
                  "document.querySelector('#key-form').requestSubmit()")

    def close(self) -> None:
        self.ws.close()


@contextmanager
def chromium(workdir: Path) -> Iterator[CDP]:
    """A headless Chromium (profile and log under ``workdir``) and its first page."""
    assert CHROMIUM is not None, NO_CHROMIUM
    port = free_port()
    profile = workdir / "chromium-profile"
    proc = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                             "--no-first-run", "--disable-background-networking", "--disable-component-update",
                             "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                             "--window-size=1400,1100", f"--remote-debugging-port={port}",
                             "--remote-debugging-address=127.0.0.1", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=open(workdir / "chromium.log", "wb"))  # noqa: SIM115
    try:
        wait_http(f"http://127.0.0.1:{port}/json/version", timeout=60)
        pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list", trust_env=False).json()
                 if t["type"] == "page"]
        cdp = CDP(pages[0]["webSocketDebuggerUrl"])
        cdp.send("Page.enable")
        cdp.send("Runtime.enable")
        try:
            yield cdp
        finally:
            cdp.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()

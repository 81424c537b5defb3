"""The dashboard in headless Chromium against a live server (uvicorn subprocess on loopback).

The job's life is driven through the database with the worker's own transitions (claim, stage,
progress, publish + finish), so the page is watched going from queued to running to succeeded
without loading a model. Screenshots land in the test's tmp dir.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)")
KEY = "dash-key-" + "7" * 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float = 60.0) -> None:
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
    """The few DevTools-protocol calls the test needs, over the page's websocket."""

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

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def live_server(tmp_path):
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAYERPRUNE_")}
    env.update(LAYERPRUNE_DATA_DIR=str(data_dir), LAYERPRUNE_API_KEYS=f"tenant-a:{KEY}",
               LAYERPRUNE_DATABASE_URL=f"sqlite:///{data_dir / 'lp.db'}", LAYERPRUNE_CUDA_WORKERS="false",
               LAYERPRUNE_LOG_LEVEL="WARNING", OMP_NUM_THREADS="1")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "layerprune.api.app:app", "--host", "127.0.0.1",
                             "--port", str(port), "--log-level", "warning"], env=env,
                            stdout=open(tmp_path / "server.log", "wb"), stderr=subprocess.STDOUT)
    try:
        _wait_http(f"http://127.0.0.1:{port}/healthz")
        yield f"http://127.0.0.1:{port}", env
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def browser(tmp_path):
    port = _free_port()
    profile = tmp_path / "chromium-profile"
    proc = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                             "--no-first-run", "--disable-background-networking", "--disable-component-update",
                             "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                             "--window-size=1400,1100", f"--remote-debugging-port={port}",
                             "--remote-debugging-address=127.0.0.1", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "chromium.log", "wb"))
    try:
        _wait_http(f"http://127.0.0.1:{port}/json/version", timeout=60)
        pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list", trust_env=False).json()
                 if t["type"] == "page"]
        cdp = CDP(pages[0]["webSocketDebuggerUrl"])
        cdp.send("Page.enable")
        cdp.send("Runtime.enable")
        yield cdp
        cdp.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_dashboard_watches_a_job_to_done(live_server, browser, tmp_path):
    from layerprune.db.session import dispose_engines, session_factory
    from layerprune.queue.transitions import claim_job, finish_job, set_progress, set_stage
    from layerprune.storage import LocalStore

    base, env = live_server
    headers = {"Authorization": f"Bearer {KEY}"}
    res = httpx.post(f"{base}/v1/jobs", headers=headers, trust_env=False,
                     json={"prune": {"metric": "magnitude_l1", "num_layers": 3}, "metadata": {"team": "ops"}})
    assert res.status_code == 201, res.text
    job_id = res.json()["id"]

    # Without a key the page asks for one and shows no jobs.
    browser.send("Page.navigate", url=f"{base}/dashboard#{job_id}")
    browser.wait_for("document.readyState === 'complete' && !!document.querySelector('#conn')")
    browser.wait_for("document.querySelector('#conn').textContent.includes('enter an API key')")
    # A wrong key is refused visibly.
    browser.eval("document.querySelector('#api-key').value = 'wrong'; document.querySelector('#key-form').requestSubmit()")
    browser.wait_for("document.querySelector('#conn').textContent.includes('refused')")
    browser.eval(f"document.querySelector('#api-key').value = '{KEY}'; "
                 "document.querySelector('#key-form').requestSubmit()")
    browser.wait_for(f"!!document.querySelector('#jobs tr[data-id=\"{job_id}\"]')")
    assert browser.eval("sessionStorage.getItem('layerprune.apiKey')") == KEY
    browser.wait_for("document.querySelector('#d-status').textContent === 'queued'")

    sessions = session_factory(env["LAYERPRUNE_DATABASE_URL"])
    worker = "browser-test-worker"
    try:
        with sessions() as s:
            assert claim_job(s, job_id, worker, 60) is not None
            assert set_stage(s, job_id, worker, "prune", progress=0.3)
        browser.wait_for("document.querySelector('#d-status').textContent === 'running'")
        browser.wait_for("document.querySelector('#d-progress-text').textContent.startsWith('30%')")
        browser.wait_for(f"document.querySelector('#jobs tr[data-id=\"{job_id}\"] .badge').textContent === 'running'")
        with sessions() as s:
            assert set_progress(s, job_id, worker, 0.6, event={"step": 6, "loss": 2.5},
                                message="scoring layer 6/8")
        browser.wait_for("document.querySelector('#d-progress-text').textContent.startsWith('60%')")
        browser.wait_for("[...document.querySelectorAll('#d-events li')].some(li => "
                         "li.textContent.includes('scoring layer 6/8') && li.textContent.includes('loss 2.500'))")
        browser.screenshot(tmp_path / "dashboard-running.png")

        out = tmp_path / "out"
        out.mkdir()
        (out / "config.json").write_text('{"num_hidden_layers": 5}')
        (out / "model.safetensors").write_bytes(b"\x01" * 2048)
        store = LocalStore(Path(env["LAYERPRUNE_DATA_DIR"]) / "artifacts")
        stored = store.put_dir(out, f"tenant-a/{job_id}")
        result = {
            "removed_layers": [2, 3, 5], "layer_scores": [9.1, 7.5, 1.2, 1.1, 6.0, 1.3, 5.5, 8.8],
            "num_layers_before": 8, "num_layers_after": 5, "params_before": 1_000_000, "params_after": 700_000,
            "metrics": {"before": {"perplexity": {"value": 20.2}, "tasks": {"arc_easy": {"acc": 0.495}}},
                        "after": {"perplexity": {"value": 41.5}, "tasks": {"arc_easy": {"acc": 0.41}}}},
            "artifacts": [{k: f[k] for k in ("path", "size_bytes", "sha256")} for f in stored],
        }
        with sessions() as s:
            assert set_stage(s, job_id, worker, "export", progress=0.95)
            assert finish_job(s, job_id, worker, result, stored)
    finally:
        dispose_engines()

    browser.wait_for("document.querySelector('#d-status').textContent === 'succeeded'")
    browser.wait_for("document.querySelector('#d-progress-text').textContent.startsWith('100%')")
    assert browser.eval("document.querySelectorAll('#d-chart rect.bar').length") == 8
    removed = browser.eval("[...document.querySelectorAll('#d-chart rect.removed')].map(r => +r.dataset.layer)")
    assert removed == [2, 3, 5]
    assert browser.eval("document.querySelectorAll('#d-chart .removed-mark').length") == 3
    rows = browser.eval("[...document.querySelectorAll('#d-metrics tbody tr')].map(r => r.dataset.metric)")
    assert rows == ["perplexity.value", "tasks.arc_easy.acc"]
    assert browser.eval("document.querySelector('#d-metrics tr[data-metric=\"perplexity.value\"] td:last-child')"
                        ".className") == "delta-bad"
    links = browser.eval("[...document.querySelectorAll('#d-artifacts a')].map(a => a.dataset.path)")
    assert sorted(links) == ["config.json", "model.safetensors"]
    assert browser.eval(f"document.querySelector('#jobs tr[data-id=\"{job_id}\"] .badge').textContent") == "succeeded"
    assert browser.eval("[...document.querySelectorAll('#d-events li')].some(li => li.dataset.type === 'state' "
                        "&& li.textContent.includes('succeeded'))")
    time.sleep(0.5)  # let the progress bar's CSS transition finish before the picture
    browser.screenshot(tmp_path / "dashboard-done.png")
    assert (tmp_path / "dashboard-done.png").stat().st_size > 10_000

    # Perplexity-style scores spanning orders of magnitude switch the chart to a log scale.
    browser.eval("window.layerpruneDashboard.renderChart([38680, 514, 30, 25, null, 224], [2, 3], 6)")
    assert browser.eval("document.querySelector('#d-chart .legend').textContent.includes('log scale')")
    assert browser.eval("document.querySelectorAll('#d-chart rect.na').length") == 1
    heights = browser.eval("[...document.querySelectorAll('#d-chart rect.bar')].map(r => +r.getAttribute('height'))")
    assert heights[0] > heights[1] > heights[5] > heights[2]
    browser.eval("window.layerpruneDashboard.refreshDetail()")

    # A download link from the page works without the Authorization header.
    url = browser.eval(f"window.layerpruneDashboard.downloadLink('{job_id}', 'config.json')", await_promise=True)
    got = httpx.get(base + url, trust_env=False)
    assert got.status_code == 200 and got.content == b'{"num_hidden_layers": 5}'

    # Retention from the page's button (confirm() answered yes), then the list of artifacts is empty.
    browser.send("Page.addScriptToEvaluateOnNewDocument", source="window.confirm = () => true;")
    browser.eval("window.confirm = () => true; document.querySelector('#d-delete').click()")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if httpx.get(f"{base}/v1/jobs/{job_id}/artifacts", headers=headers, trust_env=False).json() == []:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("artifacts were not deleted from the page")

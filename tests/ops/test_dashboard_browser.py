"""The dashboard in headless Chromium against a live server (uvicorn subprocess on loopback).

The job's life is driven through the database with the worker's own transitions (claim, stage,
progress, publish + finish), so the page is watched going from queued to running to succeeded
without loading a model. Screenshots land in the test's tmp dir and in tests/ops/screenshots/
(the helpers: tests/ops/browser.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.ops.browser import CHROMIUM, NO_CHROMIUM, SCREENSHOTS, chromium, free_port, wait_http

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
KEY = "dash-key-" + "7" * 20


@pytest.fixture
def live_server(tmp_path):
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAYERPRUNE_")}
    env.update(LAYERPRUNE_DATA_DIR=str(data_dir), LAYERPRUNE_API_KEYS=f"tenant-a:{KEY}",
               LAYERPRUNE_DATABASE_URL=f"sqlite:///{data_dir / 'lp.db'}", LAYERPRUNE_CUDA_WORKERS="false",
               LAYERPRUNE_LOG_LEVEL="WARNING", OMP_NUM_THREADS="1")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "layerprune.api.app:app", "--host", "127.0.0.1",
                             "--port", str(port), "--log-level", "warning"], env=env,
                            stdout=open(tmp_path / "server.log", "wb"), stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        yield f"http://127.0.0.1:{port}", env
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def browser(tmp_path):
    with chromium(tmp_path) as cdp:
        yield cdp


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
        # The bar says what it measures, as the CLI's does: stage, pass and task with its documents.
        with sessions() as s:
            assert set_stage(s, job_id, worker, "evaluate", progress=0.7)
            assert set_progress(s, job_id, worker, 0.8, message="piqa: 12/25 documents", event={
                "stage": "evaluate", "part": "after", "task": "piqa", "task_done": 12, "task_total": 25})
        browser.wait_for("document.querySelector('#d-progress-text').textContent === '80% · evaluate · after · piqa 12/25'")
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
    assert rows == ["num_layers", "params", "perplexity", "tasks.arc_easy.acc"]
    assert browser.eval("document.querySelector('#d-metrics tr[data-metric=\"perplexity\"] td.change')"
                        ".classList.contains('delta-bad')")
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


# ------------------------------------------------------------------ a finished real job, and a study

DATA = Path(__file__).parent / "data"


def _replay_real_job(sessions, job_id: str, worker: str, recorded: dict) -> None:
    """The recorded demo job's life, through the worker's own reporter: its stages, its progress
    events (healing steps with their loss) and logs, then its real result."""
    import threading

    from layerprune.core.pipeline import stages_of
    from layerprune.core.spec import JobSpec
    from layerprune.queue.transitions import add_job_event, claim_job, finish_job
    from layerprune.worker.hooks import JobReporter

    with sessions() as s:
        assert claim_job(s, job_id, worker, 60) is not None
    rep = JobReporter(sessions, job_id, worker, stages_of(JobSpec.from_stored(recorded["spec"])),
                      threading.Event(), interval=0)
    hooks = rep.hooks()
    for evt in recorded["events"]:
        data = dict(evt.get("data") or {})
        if evt["type"] == "stage":
            rep.on_stage(data["stage"])
        elif evt["type"] == "progress":
            training = {k: data[k] for k in ("step", "loss", "lr", "tokens_per_s", "eta_s") if k in data}
            if training:
                hooks.metrics(training)
            detail = {k: data[k] for k in ("part", "task", "task_done", "task_total", "tasks") if k in data}
            if detail:
                hooks.detail(detail)
            hooks.progress(data.get("done", 0), data.get("total", 0), evt["message"])
        elif evt["type"] in ("log", "warning"):
            with sessions() as s:
                add_job_event(s, job_id, evt["type"], evt["message"], level=evt["level"], data=data)
    with sessions() as s:
        assert finish_job(s, job_id, worker, recorded["result"], [])


def _expected_rows(result: dict) -> dict[str, tuple[str, str, str, str]]:
    """Each before/after row the page must show, as core.units (the CLI's and the card's formatter)
    writes it from the API's figures: {key: (label, before, after, change)}."""
    from layerprune.core import units

    rows = {}
    for key, stem in (("num_layers", "num_layers"), ("params", "params"), ("size_bytes", "size_bytes")):
        b, a = result.get(f"{stem}_before"), result.get(f"{stem}_after")
        if b is None and a is None:
            b, a = (result["metrics"].get(side, {}).get(stem) for side in ("before", "after"))
        if b is None and a is None:
            continue
        f = units.field(key)
        rows[key] = (f["label"], units.format_value(f["format"], b), units.format_value(f["format"], a),
                     units.format_change(f["format"], b, a))
    before, after = result["metrics"]["before"], result["metrics"]["after"]
    b, a = before["perplexity"]["value"], after["perplexity"]["value"]
    rows["perplexity"] = ("perplexity", units.format_value("ppl", b), units.format_value("ppl", a),
                          units.format_change("ppl", b, a))
    for task, res in after["tasks"].items():
        for metric in ("acc", "acc_norm"):
            f = units.field(metric)
            b, a = before["tasks"][task][metric], res[metric]
            rows[f"tasks.{task}.{metric}"] = (
                f"{units.TASK_LABELS[task]} {f['label']}",
                units.format_value("score", b) + " ± " + units.format_value("score", before["tasks"][task][metric + "_stderr"]),
                units.format_value("score", a) + " ± " + units.format_value("score", res[metric + "_stderr"]),
                units.format_change("score", b, a))
    return rows


def test_a_finished_real_job_page_and_a_study(live_server, browser, tmp_path):
    from layerprune.core import units
    from layerprune.db.session import dispose_engines, session_factory

    recorded = json.loads((DATA / "demo_job_replay.json").read_text())
    base, env = live_server
    headers = {"Authorization": f"Bearer {KEY}"}
    res = httpx.post(f"{base}/v1/jobs", headers=headers, trust_env=False, json=recorded["spec"])
    assert res.status_code == 201, res.text
    job_id = res.json()["id"]
    sessions = session_factory(env["LAYERPRUNE_DATABASE_URL"])
    try:
        _replay_real_job(sessions, job_id, "browser-test-worker", recorded)
    finally:
        dispose_engines()
    job = httpx.get(f"{base}/v1/jobs/{job_id}", headers=headers, trust_env=False).json()
    events = httpx.get(f"{base}/v1/jobs/{job_id}/events?limit=1000", headers=headers, trust_env=False).json()["data"]
    # The worker's progress never went backwards, and each event says what it measures.
    progress = [e["data"]["progress"] for e in events if e["type"] == "progress"]
    assert progress == sorted(progress) and progress
    assert all(e["data"].get("stage") for e in events if e["type"] == "progress")
    losses = [e["data"]["loss"] for e in events if e["type"] == "progress" and e["data"].get("stage") == "finetune"
              and isinstance(e["data"].get("loss"), float)]
    assert len(losses) >= 5

    browser.send("Page.navigate", url=f"{base}/dashboard#{job_id}")
    browser.wait_for("document.readyState === 'complete' && !!document.querySelector('#key-form')")
    browser.eval(f"document.querySelector('#api-key').value = '{KEY}'; document.querySelector('#key-form').requestSubmit()")
    browser.wait_for("document.querySelector('#d-status').textContent === 'succeeded'")
    browser.wait_for("document.querySelectorAll('#d-loss circle.pt').length > 0")

    # The loss curve: one point per reported healing step, in order.
    points = browser.eval("[...document.querySelectorAll('#d-loss circle.pt')].map(c => +c.dataset.loss)")
    assert points == losses
    # The layer chart: 30 layers, the 7 removed marked, and a note that reverse order has no scores.
    assert browser.eval("document.querySelectorAll('#d-chart rect.bar').length") == job["result"]["num_layers_before"]
    removed = browser.eval("[...document.querySelectorAll('#d-chart rect.removed')].map(r => +r.dataset.layer)")
    assert removed == job["result"]["removed_layers"]
    assert "reverse order" in browser.eval("document.querySelector('#d-chart .chart-note').textContent")

    # Before/after: human labels, the numbers as the one formatter writes the API's figures, colour by verdict.
    shown = browser.eval("""Object.fromEntries([...document.querySelectorAll('#d-metrics tbody tr')].map(r => [
        r.dataset.metric, [r.querySelector('td.label').textContent, r.querySelector('td.before').textContent,
                           r.querySelector('td.after').textContent, r.querySelector('td.change').textContent,
                           r.querySelector('td.change').className]]))""")
    expected = _expected_rows(job["result"])
    assert list(shown) == list(expected)
    for key, (label, before, after, change) in expected.items():
        assert shown[key][:4] == [label, before, after, change], key
    assert not any("stderr" in row[0] or row[0].endswith(" n") for row in shown.values())
    assert "delta-good" in shown["params"][4] and "delta-good" in shown["size_bytes"][4]  # fewer is better
    assert "delta-bad" in shown["perplexity"][4]  # x653: worse
    for key, row in shown.items():
        if key.startswith("tasks."):
            b, a = (job["result"]["metrics"][side]["tasks"][key.split(".")[1]][key.split(".")[2]] for side in ("before", "after"))
            assert ("delta-bad" if a < b else "delta-good" if a > b else "delta-same") in row[4], key
    # More parameters after than before (an untied lm_head) is red, though the number went up.
    browser.eval("window.layerpruneDashboard.renderMetrics({params_before: 134515008, params_after: 138045888, metrics: {}})")
    assert browser.eval("document.querySelector('#d-metrics tr[data-metric=\"params\"] td.change').textContent") == "+2.6%"
    assert "delta-bad" in browser.eval("document.querySelector('#d-metrics tr[data-metric=\"params\"] td.change').className")
    browser.eval("window.layerpruneDashboard.state.job = null; window.layerpruneDashboard.refreshDetail()")
    browser.wait_for("document.querySelector('#d-metrics tr[data-metric=\"params\"] td.change').textContent === "
                     f"{json.dumps(units.format_change('count', job['result']['params_before'], job['result']['params_after']))}")

    # The jobs list: model, recipe and headline, nothing clipped.
    row = f"#jobs tr[data-id=\"{job_id}\"]"
    browser.wait_for(f"!!document.querySelector('{row} td.recipe')")
    assert browser.eval(f"document.querySelector('{row} td.model').textContent") == "smollm2-135m-instruct"
    assert browser.eval(f"document.querySelector('{row} td.recipe').textContent") == \
        "reverse_order · 25% · removed · heal partial"
    figures = browser.eval(f"[...document.querySelectorAll('{row} td.result .figure')].map(f => [f.dataset.key, f.textContent])")
    m, r = job["result"]["metrics"], job["result"]
    acc_b = sum(t["acc"] for t in m["before"]["tasks"].values()) / len(m["before"]["tasks"])
    acc_a = sum(t["acc"] for t in m["after"]["tasks"].values()) / len(m["after"]["tasks"])
    ppl_b, ppl_a = m["before"]["perplexity"]["value"], m["after"]["perplexity"]["value"]
    assert figures == [
        ["perplexity", f"ppl {units.format_value('ppl', ppl_a)} ({units.format_change('ppl', ppl_b, ppl_a)})"],
        ["mean_acc", f"acc {units.format_value('score', acc_a)} ({units.format_change('score', acc_b, acc_a)})"],
        ["params", f"{units.human_count(r['params_after'])} params ({units.format_change('count', r['params_before'], r['params_after'])})"],
    ]
    clipped = browser.eval("[...document.querySelectorAll('#jobs td, #jobs th')].filter(c => c.scrollWidth > c.clientWidth + 1)"
                           ".map(c => c.textContent)")
    assert clipped == []
    assert browser.eval("document.querySelector('#jobs').scrollWidth <= document.querySelector('#jobs-panel').clientWidth + 1")

    SCREENSHOTS.mkdir(exist_ok=True)
    time.sleep(0.5)
    browser.screenshot(SCREENSHOTS / "job-finished.png")
    browser.full_page_screenshot(SCREENSHOTS / "job-finished-full.png")
    print(f"screenshots: {SCREENSHOTS}")

    # A study from a fixture of the GET /v1/studies/{id} shape; one candidate is this real job.
    study = json.loads((DATA / "study_fixture.json").read_text())
    fixture_id = study["candidates"][3]["job_id"]
    study["candidates"][3]["job_id"] = job_id
    study["pareto"] = {axis: [job_id if j == fixture_id else j for j in ids] for axis, ids in study["pareto"].items()}
    # GET /v1/studies answers {"data": [study, ...], ...}: the list shows each with its recommended recipe.
    browser.eval(f"window.layerpruneDashboard.renderStudies({json.dumps([study])})")
    listed = browser.eval("[...document.querySelectorAll('#studies tbody tr')].map(r => [r.dataset.id, "
                          "r.querySelector('td.recipe').textContent])")
    assert listed == [[study["id"], "angular · 4 layers · linear · distill"]]
    browser.eval(f"window.layerpruneDashboard.renderStudy({json.dumps(study)})")
    assert browser.eval("!document.querySelector('#study').hidden")
    for chart, axis in (("#s-chart-params", "params"), ("#s-chart-speed", "speed")):
        marked = browser.eval(f"[...document.querySelectorAll('{chart} .pt.front')].map(p => p.dataset.job)")
        front = [c["job_id"] for c in study["candidates"] if c["pareto"][axis]]
        assert sorted(marked) == sorted(front), chart
        finished = [c for c in study["candidates"] if c["results"]["quality"] is not None]
        assert browser.eval(f"document.querySelectorAll('{chart} .pt:not(.baseline)').length") == len(finished)
        assert browser.eval(f"document.querySelectorAll('{chart} .pt.baseline').length") == 1
        assert browser.eval(f"document.querySelectorAll('{chart} .pt.recommended').length") == 1
    assert browser.eval("document.querySelector('#s-recommendation').textContent").endswith(study["recommendation"]["reason"])
    quality = browser.eval("[...document.querySelectorAll('#s-candidates td[data-key=quality]')].map(c => c.textContent)")
    assert quality == [units.format_value("score", v) for v in
                       [study["baseline"]["results"]["mean_acc"], *(c["results"]["quality"] for c in study["candidates"])]]
    # Beside accuracy, the other figure: perplexity.
    assert browser.eval("document.querySelector('#s-other-head').textContent") == "perplexity"
    ppl = browser.eval("[...document.querySelectorAll('#s-candidates td[data-key=perplexity]')].map(c => c.textContent)")
    assert ppl == [units.format_value("ppl", v) for v in
                   [study["baseline"]["results"]["perplexity"], *(c["results"]["perplexity"] for c in study["candidates"])]]
    time.sleep(0.3)
    browser.full_page_screenshot(SCREENSHOTS / "study.png")
    # A candidate's point is a link to its job's page.
    browser.eval(f"document.querySelector('#s-chart-params a[href=\"#{job_id}\"]')"
                 ".dispatchEvent(new MouseEvent('click', {bubbles: true}))")
    browser.wait_for(f"location.hash === '#{job_id}' && !document.querySelector('#jobs-view').hidden "
                     f"&& document.querySelector('#d-id').textContent === '{job_id}'")


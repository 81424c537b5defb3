"""A study end to end on the embedded default: ``layerprune serve`` and ``layerprune worker`` as real
processes on SQLite + the filesystem queue, through the Python client, the CLI and the dashboard in
headless Chromium. The study runs once (``finished_study``); its CLI table, GET response and
screenshots are left in tests/ops/screenshots/ (study-live.txt, .json, .png, study-candidate-job.png)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest

from layerprune.client import LayerPruneClient, StudyCancelled
from tests.cli.conftest import KEY_A, KEY_B, REPO, Proc, free_port, live_env
from tests.ops.browser import CHROMIUM, NO_CHROMIUM, SCREENSHOTS, chromium
from tests.studies.live import Receiver, check_finished_study, shape_mismatches, small_study

STUDY_FIXTURE = REPO / "tests" / "ops" / "data" / "study_fixture.json"

# Render the list and the study from the real responses wrapped in proxies that note every key the
# page reads and whether the response has it: {"candidates[].results.quality": true, ...}.
_RECORD_READS = """(() => {
  const reads = {};
  const wrap = (v, path) => {
    if (v === null || typeof v !== "object") return v;
    return new Proxy(v, { get(t, k, r) {
      const val = Reflect.get(t, k, r);
      if (typeof k !== "string") return val;
      if (Array.isArray(t)) return /^[0-9]+$/.test(k) ? wrap(val, path + "[]") : val;
      const p = path ? path + "." + k : k;
      reads[p] = (reads[p] ?? true) && Object.prototype.hasOwnProperty.call(t, k);
      return wrap(val, p);
    } });
  };
  window.layerpruneDashboard.renderStudies(wrap(%s, "list"));
  window.layerpruneDashboard.renderStudy(wrap(%s, ""));
  return reads;
})()"""


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    root = tmp_path_factory.mktemp("study-live")
    data_dir = root / "data"
    data_dir.mkdir()
    (root / "models").mkdir()
    env = {**live_env(data_dir, root / "models"), "LAYERPRUNE_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
           "LAYERPRUNE_WEBHOOK_INTERVAL_SECONDS": "0.5"}
    port = free_port()
    api = Proc(["serve", "--host", "127.0.0.1", "--port", str(port)], env, root / "api.log")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert api.alive() and time.monotonic() < deadline, api.tail()
        time.sleep(0.2)
    worker = Proc(["worker", "--queues", "gpu,cpu"], env, root / "worker.log")
    yield url, env, api, worker
    worker.stop()
    api.stop()


@pytest.fixture(scope="module")
def finished_study(embedded, tmp_path_factory):
    """The one real study of this module (3 metrics × 2 ratios, with a speed benchmark), run through
    ``layerprune study --wait``; shared by the CLI's checks and the dashboard's, so it runs once."""
    url, env, api, worker = embedded
    hook = Receiver()
    spec_file = tmp_path_factory.mktemp("study-spec") / "study.json"
    spec_file.write_text(json.dumps(small_study(hook.url, speed=True)))
    cli_env = {**env, "LAYERPRUNE_URL": url, "LAYERPRUNE_API_KEY": KEY_A}
    try:
        run = subprocess.run([sys.executable, "-m", "layerprune.cli", "study", str(spec_file), "--wait"],
                             env=cli_env, cwd=REPO, capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + worker.tail(60)
        SCREENSHOTS.mkdir(exist_ok=True)
        (SCREENSHOTS / "study-live.txt").write_text(run.stdout)
        with LayerPruneClient(url, KEY_A) as lp:
            study = lp.list_studies(limit=1).data[0]
        yield {"run": run, "study": study, "hook": hook, "cli_env": cli_env}
    finally:
        hook.close()


def test_study_end_to_end_with_the_cli(embedded, finished_study):
    url, env, api, worker = embedded
    run, study, hook, cli_env = (finished_study[k] for k in ("run", "study", "hook", "cli_env"))
    assert "recommended:" in run.stdout and "Pareto" in run.stdout
    with LayerPruneClient(url, KEY_A) as lp:
        events = {c["job_id"]: lp.events(c["job_id"]) for c in study.candidates}
        events[study.baseline["job_id"]] = lp.events(study.baseline["job_id"])
        check_finished_study(study.raw, events)
        shown = subprocess.run([sys.executable, "-m", "layerprune.cli", "studies", "show", study.id],
                               env=cli_env, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0 and "taylor · 20%" in shown.stdout
    with LayerPruneClient(url, KEY_B) as other:
        with pytest.raises(Exception) as exc:
            other.get_study(study.id)
        assert getattr(exc.value, "status", None) == 404
    deadline = time.monotonic() + 30
    while "study.succeeded" not in hook.types() and time.monotonic() < deadline:
        time.sleep(0.3)
    assert hook.types() == ["study.succeeded"]
    body = hook.received[0]["body"]
    assert body["data"]["id"] == study.id and body["data"]["spec"]["webhook"]["secret"] == "***"
    from layerprune.webhooks import verify

    assert verify("whsec_c3R1ZHktc2VjcmV0", hook.received[0]["headers"],
                  json.dumps(body, separators=(",", ":"), sort_keys=True).encode())


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_the_finished_study_in_the_dashboard(embedded, finished_study, tmp_path):
    """The same study's page in headless Chromium: every figure as the one formatter (core.units, of
    which format.js is the port) writes GET /v1/studies/{id}'s, the fronts as the API flags them, and
    a candidate's point leading to its job's page. The real response is kept beside the screenshots
    (study-live.json) and the dashboard's fixture must have its shape."""
    from layerprune.core import units

    url = embedded[0]
    auth = {"Authorization": f"Bearer {KEY_A}"}
    study_id = finished_study["study"].id
    study = httpx.get(f"{url}/v1/studies/{study_id}", headers=auth, trust_env=False).json()
    listed = httpx.get(f"{url}/v1/studies?limit=50", headers=auth, trust_env=False).json()["data"]
    SCREENSHOTS.mkdir(exist_ok=True)
    (SCREENSHOTS / "study-live.json").write_text(json.dumps(study, indent=1) + "\n")
    fixture = json.loads(STUDY_FIXTURE.read_text())
    assert shape_mismatches(fixture, study) == []
    assert study["status"] == "succeeded" and study["baseline"]["speed"] is not None

    cands, rec = study["candidates"], study["recommendation"]
    qname = study["quality"]["name"]
    other = "mean_acc" if qname == "perplexity" else "perplexity"
    fmt = {name: units.field(name)["format"] for name in (qname, other, "params", "speedup")}
    base = study["baseline"]
    expected = [[base["job_id"], "baseline (unpruned)", base["status"], units.format_value(fmt[qname], base["results"][qname]),
                 units.format_value(fmt[other], base["results"][other]), units.format_value(fmt["params"], base["params"]),
                 units.format_value(fmt["speedup"], 1.0), "—", "—"]]
    for c in cands:
        r = c["results"]
        front = ", ".join(axis for axis in ("params", "speed") if c["pareto"][axis]) or "—"
        meets = {True: "yes", False: "no", None: "—"}[c["meets_constraints"]]
        expected.append([c["job_id"], c["label"], c["status"], units.format_value(fmt[qname], r["quality"]),
                         units.format_value(fmt[other], r[other]), units.format_value(fmt["params"], r["params"]),
                         units.format_value(fmt["speedup"], r["speedup"]), front, meets])

    with chromium(tmp_path) as page:
        page.sign_in(f"{url}/dashboard#{study_id}", KEY_A)
        page.wait_for("!document.querySelector('#study').hidden && "
                      "document.querySelector('#s-status').textContent === 'succeeded'", timeout=30)
        page.wait_for(f"document.querySelectorAll('#s-candidates tbody tr').length === {len(cands) + 1}")
        assert page.eval("document.querySelector('#s-id').textContent") == study_id
        assert page.eval("document.querySelector('#s-progress-text').textContent") == \
            f"{study['progress']['done']} of {study['progress']['total']} jobs finished"
        rows = page.eval("""[...document.querySelectorAll('#s-candidates tbody tr')].map(r => [r.dataset.job,
            ...[...r.querySelectorAll('td')].map(td => td.textContent)])""")
        assert rows == expected
        heads = page.eval("[...document.querySelectorAll('#s-candidates thead th')].map(th => th.textContent)")
        assert heads[2:4] == [units.field(qname)["label"], units.field(other)["label"]]
        assert page.eval("[...document.querySelectorAll('#s-candidates tr.recommended')].map(r => r.dataset.job)") \
            == [rec["job_id"]]
        link = page.eval("(a => [a.getAttribute('href'), a.textContent])(document.querySelector('#s-recommendation a.rec-link'))")
        assert link == [f"#{rec['job_id']}", next(c["label"] for c in cands if c["job_id"] == rec["job_id"])]
        assert page.eval("document.querySelector('#s-recommendation .reason').textContent") == " — " + rec["reason"]
        # Each chart: every finished candidate and the baseline plotted, the API's front marked.
        for chart, axis, x in (("#s-chart-params", "params", "params"), ("#s-chart-speed", "speed", "speedup")):
            plotted = [c["job_id"] for c in cands if c["results"]["quality"] is not None and c["results"][x] is not None]
            shown = page.eval(f"[...document.querySelectorAll('{chart} .pt:not(.baseline)')].map(p => p.dataset.job)")
            assert sorted(shown) == sorted(plotted), chart
            marked = page.eval(f"[...document.querySelectorAll('{chart} .pt.front')].map(p => p.dataset.job)")
            assert sorted(marked) == sorted(c["job_id"] for c in cands if c["pareto"][axis]) == sorted(study["pareto"][axis])
            assert page.eval(f"[...document.querySelectorAll('{chart} .pt.baseline')].map(p => p.dataset.job)") \
                == [base["job_id"]]
            assert page.eval(f"[...document.querySelectorAll('{chart} .pt.recommended')].map(p => p.dataset.job)") \
                == [rec["job_id"]]
        time.sleep(0.5)  # the progress bar's CSS transition
        page.full_page_screenshot(SCREENSHOTS / "study-live.png")

        # Every key the page reads, from the list and from the study, is in the real responses.
        reads = page.eval(_RECORD_READS % (json.dumps(listed), json.dumps(study)))
        assert {p for p, present in reads.items() if not present} == set(), reads
        assert {"candidates[].results.quality", "baseline.results." + qname, "pareto.params",
                "recommendation.job_id"} <= set(reads)

        # The recommended candidate's point on the parameters chart leads to its job's page.
        job_id = rec["job_id"]
        r = next(c for c in cands if c["job_id"] == job_id)["results"]
        page.eval(f"document.querySelector('#s-chart-params a[href=\"#{job_id}\"]')"
                  ".dispatchEvent(new MouseEvent('click', {bubbles: true}))")
        page.wait_for(f"location.hash === '#{job_id}' && !document.querySelector('#jobs-view').hidden "
                      f"&& document.querySelector('#d-id').textContent === '{job_id}' "
                      "&& document.querySelector('#d-status').textContent === 'succeeded' "
                      "&& !!document.querySelector('#d-metrics tr[data-metric=\"perplexity\"]')", timeout=30)
        after = page.eval("Object.fromEntries([...document.querySelectorAll('#d-metrics tbody tr')].map(r => "
                          "[r.dataset.metric, r.querySelector('td.after').textContent]))")
        # The job's page and the study agree on the candidate's figures.
        assert after["params"] == units.format_value("count", r["params"])
        assert after["perplexity"] == units.format_value("ppl", r["perplexity"])
        assert after["tasks.arc_easy.acc"].startswith(units.format_value("score", r["mean_acc"]) + " ± ")
        time.sleep(0.5)
        page.full_page_screenshot(SCREENSHOTS / "study-candidate-job.png")
    print(f"screenshots: {SCREENSHOTS}")


def test_cancel_study_through_the_client(embedded):
    url, *_ = embedded
    body = small_study()
    body["axes"]["heal_methods"] = ["partial"]  # healing: long enough to be cancelled first
    body["finetune"] = {"max_steps": 50, "batch_size": 2, "micro_batch_size": 1, "warmup_steps": 0,
                        "dataset": "bundled:wikipedia-train", "format": "text"}
    with LayerPruneClient(url, KEY_A) as lp:
        study = lp.create_study(body)
        cancelled = lp.cancel_study(study.id)
        assert cancelled.raw["cancel_requested_at"] is not None
        with pytest.raises(StudyCancelled) as exc:
            lp.wait_study(study.id, poll_interval=0.5, timeout=120)
        final = exc.value.study
        assert final.status == "cancelled"
        assert {c["status"] for c in final.candidates} == {"cancelled"}
        assert final.baseline["status"] in ("cancelled", "succeeded")



"""What the live study tests share: a small study on the bundled model, a webhook receiver, and
the checks made from the jobs' events (one scoring pass per metric, one base evaluation)."""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

METRICS = ["block_influence", "taylor", "magnitude_l2"]


def small_study(webhook_url: str | None = None, *, speed: bool = False) -> dict[str, Any]:
    """3 metrics × 2 ratios on SmolLM2-135M: tiny calibration, 2 perplexity windows, 10 ARC-Easy items."""
    evaluate: dict[str, Any] = {"perplexity": {"max_windows": 2, "seq_len": 64}, "tasks": ["arc_easy"],
                                "limit": 10, "batch_size": 8}
    if speed:
        evaluate["speed"] = {"prompt_tokens": 16, "new_tokens": 4, "batch_sizes": [1], "repeats": 1, "warmup": 0}
    body: dict[str, Any] = {"model": "bundled:smollm2-135m-instruct",
                            "axes": {"metrics": METRICS, "ratios": [0.1, 0.2]},
                            "prune": {"calibration": {"num_samples": 2, "seq_len": 32}},
                            "evaluate": evaluate, "metadata": {"case": "live-study"}}
    if webhook_url:
        body["webhook"] = {"url": webhook_url, "secret": "whsec_c3R1ZHktc2VjcmV0"}
    return body


class Receiver:
    """An HTTP server on 127.0.0.1 that records every webhook POST."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                received.append({"headers": dict(self.headers), "body": json.loads(body)})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()

    def types(self) -> list[str]:
        return [r["body"]["type"] for r in self.received]


def cache_outcomes(events_by_job: dict[str, list[Any]], kind: str) -> Counter:
    """(metric or "", outcome) → how many jobs' events say so, for cache ``kind``."""
    out: Counter = Counter()
    for events in events_by_job.values():
        for e in events:
            data = e.data if hasattr(e, "data") else e["data"]
            if (data or {}).get("cache") == kind:
                out[(data.get("metric", ""), data["outcome"])] += 1
    return out


def check_finished_study(study: dict[str, Any], events_by_job: dict[str, list[Any]]) -> None:
    """Every figure a finished study promises, and the shared work done once."""
    assert study["status"] == "succeeded", study
    assert study["progress"] == {"done": 6, "total": 6}
    base = study["baseline"]
    assert base["status"] == "succeeded" and base["params"] > 100_000_000
    assert base["results"]["perplexity"] > 1 and 0 <= base["results"]["mean_acc"] <= 1
    assert set(base["results"]["tasks"]) == {"arc_easy"}
    for c in study["candidates"]:
        assert c["status"] == "succeeded", c
        r = c["results"]
        assert r["params"] < base["params"] and r["quality"] == r["mean_acc"] and r["perplexity"] > 1
    # Fewer layers, fewer parameters: 20% removes more than 10%.
    by_label = {c["label"]: c for c in study["candidates"]}
    assert by_label["taylor · 20%"]["results"]["params"] < by_label["taylor · 10%"]["results"]["params"]
    assert study["pareto"]["params"] and study["recommendation"]["job_id"] in study["pareto"]["params"]
    assert "best mean_acc" in study["recommendation"]["reason"]
    # One scoring pass per metric; the other ratio found the scores in the cache.
    scores = cache_outcomes(events_by_job, "layer_scores")
    assert scores == {**{(m, "computed"): 1 for m in METRICS}, **{(m, "hit"): 1 for m in METRICS}}, scores
    # The base model evaluated once for the baseline and all six "before"s.
    base_eval = cache_outcomes(events_by_job, "base_evaluation")
    assert base_eval == {("", "computed"): 1, ("", "hit"): 6}, base_eval


# Maps whose keys are the caller's or the run's own (the spec as sent, metadata, the tasks evaluated).
FREE_FORM = ("spec", "metadata", "tasks")


def shape_mismatches(fixture: Any, real: Any, path: str = "") -> list[str]:
    """Where a hand-made study object differs in shape from a real one: a key one has and the other
    lacks, or a value of another kind. ``null`` matches anything (a figure not measured yet)."""
    if fixture is None or real is None:
        return []
    if isinstance(fixture, dict) and isinstance(real, dict):
        if path.rsplit(".", 1)[-1] in FREE_FORM:
            return []
        out = [f"{path}.{k}: only in the fixture" for k in fixture.keys() - real.keys()]
        out += [f"{path}.{k}: only in the real response" for k in real.keys() - fixture.keys()]
        for k in fixture.keys() & real.keys():
            out += shape_mismatches(fixture[k], real[k], f"{path}.{k}")
        return sorted(out)
    if isinstance(fixture, list) and isinstance(real, list):
        # Every element against every other side's: a list holds one kind of thing.
        return sorted({m for f in fixture for r in real for m in shape_mismatches(f, r, path + "[]")})
    number = (int, float)
    same = (isinstance(fixture, number) and isinstance(real, number) and not isinstance(fixture, bool)
            and not isinstance(real, bool)) or type(fixture) is type(real)
    return [] if same else [f"{path}: {type(fixture).__name__} in the fixture, {type(real).__name__} in the real response"]

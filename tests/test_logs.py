"""Structured JSON logs carry the job id and tenant; API keys never appear in them."""

from __future__ import annotations

import json
import logging

from layerprune.logs import JsonFormatter, bind
from tests.api.helpers import PRUNE
from tests.service_fixtures import *  # noqa: F403 - the live app fixtures (client, new_tenant)


def test_json_formatter_binds_context_and_masks_bearer():
    fmt = JsonFormatter()
    with bind(job_id="job_1", tenant="acme"):
        rec = logging.LogRecord("x", logging.INFO, __file__, 1, "sent Authorization: Bearer sekrit-key", (), None)
        rec.queue = "gpu"
        out = json.loads(fmt.format(rec))
    assert out["job_id"] == "job_1" and out["tenant"] == "acme" and out["queue"] == "gpu"
    assert "sekrit" not in out["message"] and out["level"] == "info" and out["time"].endswith("Z")
    rec = logging.LogRecord("x", logging.INFO, __file__, 1, "outside", (), None)
    assert "job_id" not in json.loads(fmt.format(rec))


def test_request_logs_carry_job_and_tenant_never_the_key(client, new_tenant, caplog):
    tenant, h = new_tenant
    key = h["Authorization"].split()[1]
    fmt = JsonFormatter()
    with caplog.at_level(logging.INFO):
        job_id = client.post("/v1/jobs", json=PRUNE, headers=h).json()["id"]
        client.get(f"/v1/jobs/{job_id}", headers=h)
        client.get("/v1/jobs", headers={"Authorization": "Bearer not-a-real-key"})
    lines = [json.loads(fmt.format(r)) for r in caplog.records]
    text = "\n".join(json.dumps(x) for x in lines)
    assert key not in text and "not-a-real-key" not in text
    created = [x for x in lines if x["message"] == "job created"]
    assert created and created[0]["job_id"] == job_id and created[0]["tenant"] == tenant
    requests = [x for x in lines if x["message"] == "request" and x.get("path") == f"/v1/jobs/{job_id}"]
    assert requests and requests[0]["tenant"] == tenant and requests[0]["status"] == 200

"""``priority`` is an integer, not anything Python can turn into one (a boolean was taken as 0 or 1)."""

from __future__ import annotations

import pytest

from tests.api.helpers import PRUNE


@pytest.mark.parametrize("value", [False, True, "5", 5.0, None, [1]])
def test_a_priority_that_is_not_an_integer_is_422_naming_it(client, new_tenant, value):
    _tenant, h = new_tenant
    r = client.post("/v1/jobs", json={**PRUNE, "priority": value}, headers=h)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == "priority", r.json()
    assert client.get("/v1/jobs", headers=h).json()["data"] == []  # nothing stored


def test_an_integer_priority_is_accepted_and_echoed(client, new_tenant):
    _tenant, h = new_tenant
    r = client.post("/v1/jobs", json={**PRUNE, "priority": -7}, headers=h)
    assert r.status_code == 201, r.text
    assert r.json()["priority"] == -7 and r.json()["spec"]["priority"] == -7
    client.post(f"/v1/jobs/{r.json()['id']}/cancel", headers=h)

"""evaluate.speed over HTTP: accepted (true or settings, alone or with other metrics), or a 422 naming the field."""

from __future__ import annotations


def _post(client, h, evaluate):
    return client.post("/v1/jobs", json={"evaluate": evaluate}, headers=h)


def test_speed_alone_or_with_settings_is_accepted(client, new_tenant):
    _, h = new_tenant
    r = _post(client, h, {"speed": True})
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["evaluate"]["speed"] == {"prompt_tokens": 128, "new_tokens": 32, "batch_sizes": [1, 8],
                                                     "repeats": 3, "warmup": 1}
    r = _post(client, h, {"tasks": ["piqa"], "speed": {"batch_sizes": [1, 4], "repeats": 5}})
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["evaluate"]["speed"]["batch_sizes"] == [1, 4]
    r = _post(client, h, {"tasks": ["piqa"], "speed": False})
    assert r.status_code == 201 and r.json()["spec"]["evaluate"]["speed"] is None


def test_bad_speed_settings_are_422_naming_the_field(client, new_tenant):
    _, h = new_tenant
    before = client.get("/v1/jobs", headers=h).json()["data"]
    cases = [
        ({"speed": {"prompt_tokens": 0}}, "evaluate.speed.prompt_tokens"),
        ({"speed": {"new_tokens": 5000}}, "evaluate.speed.new_tokens"),
        ({"speed": {"batch_sizes": []}}, "evaluate.speed.batch_sizes"),
        ({"speed": {"batch_sizes": [2, 2]}}, "evaluate.speed.batch_sizes"),
        ({"speed": {"repeats": 0}}, "evaluate.speed.repeats"),
        ({"speed": {"warmup": 11}}, "evaluate.speed.warmup"),
        ({"speed": {"threads": 2}}, "evaluate.speed.threads"),
        ({"speed": "fast"}, "evaluate.speed"),
        ({"speed": False}, "evaluate"),  # nothing left to evaluate
    ]
    for evaluate, param in cases:
        r = _post(client, h, evaluate)
        assert r.status_code == 422, (evaluate, r.text)
        assert r.json()["error"]["param"] == param, (evaluate, r.json())
    r = _post(client, h, {"speed": {"batch_sizes": [1, 0]}})
    assert r.status_code == 422 and r.json()["error"]["param"].startswith("evaluate.speed.batch_sizes"), r.text
    assert client.get("/v1/jobs", headers=h).json()["data"] == before

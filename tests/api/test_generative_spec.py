"""Job specs with generative tasks: accepted, or a 422 naming the field, and nothing stored on a 422."""

from __future__ import annotations

import json

GSM8K_TRAIN = b"".join(json.dumps({"question": f"q{i}", "answer": f"a\n#### {i}"}).encode() + b"\n" for i in range(6))


def _post(client, h, evaluate):
    return client.post("/v1/jobs", json={"evaluate": evaluate}, headers=h)


def test_generative_tasks_and_chat_template_are_accepted(client, new_tenant):
    _, h = new_tenant
    r = _post(client, h, {"tasks": ["gsm8k_cot", "lambada_openai", "triviaqa", "nq_open"], "limit": 5,
                          "apply_chat_template": True})
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["evaluate"]["apply_chat_template"] is True


def test_generative_options_that_do_not_apply_are_422(client, new_tenant):
    _, h = new_tenant
    before = client.get("/v1/jobs", headers=h).json()["data"]
    cases = [
        ({"tasks": ["piqa", "triviaqa"], "apply_chat_template": True}, "evaluate.tasks[0]"),
        ({"tasks": ["triviaqa"], "gsm8k_train": "file_whatever"}, "evaluate.gsm8k_train"),
        ({"tasks": ["gsm8k"], "gsm8k_train": "file_doesnotexist"}, "evaluate.gsm8k_train"),
        ({"tasks": ["triviaqa"], "apply_chat_template": "sometimes"}, "evaluate.apply_chat_template"),
        ({"tasks": ["gsm8k_cots"]}, "evaluate.tasks"),
    ]
    for evaluate, param in cases:
        r = _post(client, h, evaluate)
        assert r.status_code == 422, (evaluate, r.text)
        assert r.json()["error"]["param"] == param, (evaluate, r.json())
    assert client.get("/v1/jobs", headers=h).json()["data"] == before


def test_stock_gsm8k_offline_needs_an_uploaded_train_split(client, new_tenant, monkeypatch):
    _, h = new_tenant
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    r = _post(client, h, {"tasks": ["nq_open", "gsm8k"], "limit": 2})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["param"] == "evaluate.tasks[1]" and "gsm8k_train" in err["message"]
    up = client.post("/v1/files", files={"file": ("gsm8k_train.jsonl", GSM8K_TRAIN)}, data={"purpose": "evaluate"},
                     headers=h)
    assert up.status_code == 201, up.text
    r = _post(client, h, {"tasks": ["nq_open", "gsm8k"], "limit": 2, "gsm8k_train": up.json()["id"]})
    assert r.status_code == 201, r.text


def test_gsm8k_train_upload_is_checked_as_gsm8k_records(client, new_tenant):
    """A GSM8K train file is its own upload format (question + answer); a text file named as the
    few-shot pool is a 422 at submit, not a failure in the worker."""
    _, h = new_tenant
    up = client.post("/v1/files", files={"file": ("train.jsonl", GSM8K_TRAIN)}, data={"purpose": "evaluate"},
                     headers=h)
    assert up.status_code == 201, up.text
    assert up.json()["formats"] == ["gsm8k"]
    bad = b'{"question": "q"}\n'
    r = client.post("/v1/files", files={"file": ("half.jsonl", bad)}, data={"purpose": "evaluate"}, headers=h)
    assert r.status_code == 422 and r.json()["error"]["param"] == "file", r.text
    text = client.post("/v1/files", files={"file": ("t.txt", b"A paragraph.\n\nAnother one.\n")},
                       data={"purpose": "evaluate"}, headers=h)
    assert text.status_code == 201, text.text
    r = _post(client, h, {"tasks": ["gsm8k"], "limit": 2, "gsm8k_train": text.json()["id"]})
    assert r.status_code == 422 and r.json()["error"]["param"] == "evaluate.gsm8k_train", r.text

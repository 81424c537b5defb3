"""Every line of an upload is checked against the formats its purpose allows, and a job spec that
names the file is checked against the file's format at submit time (issue 11)."""

from __future__ import annotations

import json

import pytest

from tests.api.helpers import PRUNE


def rows_jsonl(rows) -> bytes:
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


ALPACA = [{"instruction": f"Say {i}", "input": "", "output": str(i)} for i in range(5)]
DOLLY = [{"instruction": f"Say {i}", "context": "", "response": str(i)} for i in range(5)]
CHAT = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 3
TEXTS = [{"text": f"Paragraph {i} of the calibration text."} for i in range(4)]


def upload(client, h, name, data, purpose="finetune", fmt=None):
    fields = {"purpose": purpose}
    if fmt is not None:
        fields["format"] = fmt
    return client.post("/v1/files", files={"file": (name, data)}, data=fields, headers=h)


def refused(r, param="file"):
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
    return err["message"]


def test_the_purpose_module_and_the_tables_agree():
    from layerprune.api.file_checks import PURPOSE_FORMATS
    from layerprune.core.finetune.data import FIELDS
    from layerprune.core.spec import FinetuneSpec
    from layerprune.db.models import FILE_PURPOSES

    assert set(PURPOSE_FORMATS) == set(FILE_PURPOSES)
    # Every format a spec may name is checked at upload (one source: core's FIELDS).
    assert set(FinetuneSpec.model_fields["format"].annotation.__args__) <= set(FIELDS)


def test_unsupported_file_types_are_refused(client, new_tenant):
    _, h = new_tenant
    for name, data in (("README.md", b"# Title\n\nSome text.\n"), ("data.csv", b"instruction,output\na,b\n"),
                       ("weights.bin", b"\x00\x01"), ("noext", b"text\n")):
        msg = refused(upload(client, h, name, data))
        assert "unsupported file type" in msg and name in msg
    assert client.get("/v1/files", headers=h).json()["data"] == []


def test_rows_must_fit_a_format_of_the_purpose(client, new_tenant):
    _, h = new_tenant
    # alpaca until line 3, which lacks 'output': no finetune format fits the whole file.
    bad = ALPACA[:2] + [{"instruction": "x"}] + ALPACA[2:]
    msg = refused(upload(client, h, "a.jsonl", rows_jsonl(bad)))
    assert msg.startswith("line 3: missing field 'output' (format 'alpaca')"), msg
    assert "'dolly' (line 1)" in msg
    # A field of the wrong type, an empty required field.
    assert refused(upload(client, h, "a.jsonl", rows_jsonl([*ALPACA, {"instruction": "x", "output": 5}]))
                   ).startswith("line 6: field 'output' must be a string")
    assert refused(upload(client, h, "a.jsonl", rows_jsonl([{"instruction": " ", "output": "y"}]))
                   ).startswith("line 1: field 'instruction' is empty")
    assert refused(upload(client, h, "c.jsonl", rows_jsonl([{"messages": [{"role": "assistant", "content": "a"},
                                                                          {"role": "user", "content": "b"}]}]))
                   ).startswith("line 1: the last message must have role 'assistant'")
    # Each of the formats alone is fine, and the file says what it fits.
    for rows, fits in ((ALPACA, ["alpaca"]), (DOLLY, ["dolly"]), (CHAT, ["chat"]), (TEXTS, ["text", "texts"])):
        r = upload(client, h, "ok.jsonl", rows_jsonl(rows))
        assert r.status_code == 201, r.text
        assert r.json()["num_records"] == len(rows) and r.json()["formats"] == fits
        assert client.get(f"/v1/files/{r.json()['id']}", headers=h).json()["formats"] == fits
    r = upload(client, h, "ok.txt", b"Plain text.\n")
    assert r.json()["formats"] == ["text", "texts"]


def test_a_declared_format_is_checked_on_every_line(client, new_tenant):
    _, h = new_tenant
    assert upload(client, h, "a.jsonl", rows_jsonl(ALPACA), fmt="alpaca").status_code == 201
    msg = refused(upload(client, h, "a.jsonl", rows_jsonl(ALPACA), fmt="dolly"))
    assert msg == "line 1: missing field 'response' (format 'dolly')"
    assert refused(upload(client, h, "a.txt", b"some text\n", fmt="alpaca")).startswith("a plain-text file")
    assert upload(client, h, "a.txt", b"some text\n", fmt="text").status_code == 201
    refused(upload(client, h, "a.jsonl", rows_jsonl(ALPACA), fmt="bogus"), param="format")
    refused(upload(client, h, "a.jsonl", rows_jsonl(TEXTS), purpose="calibration", fmt="text"), param="format")


def test_calibration_and_evaluation_text(client, new_tenant):
    _, h = new_tenant
    for purpose in ("calibration", "evaluate"):
        assert upload(client, h, "t.jsonl", rows_jsonl(TEXTS), purpose=purpose).status_code == 201
        content = [{"content": "a"}, {"content": "b", "text": "c"}]  # the first record names the field
        assert upload(client, h, "t.jsonl", rows_jsonl(content), purpose=purpose).status_code == 201
        msg = refused(upload(client, h, "t.jsonl", rows_jsonl(ALPACA), purpose=purpose))
        assert msg.startswith("line 1: no text field") and "content" in msg
        msg = refused(upload(client, h, "t.jsonl", rows_jsonl([*TEXTS, {"content": "x"}]), purpose=purpose))
        assert msg.startswith("line 5: field 'text'")


def test_purpose_sent_after_the_file_still_decides(client, new_tenant):
    _, h = new_tenant
    boundary = "b0undary"

    def body(rows: list[dict], purpose: str) -> bytes:
        return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.jsonl\"\r\n\r\n"
                ).encode() + rows_jsonl(rows) + (
                f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n"
                f"--{boundary}--\r\n").encode()

    headers = {**h, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    r = client.post("/v1/files", content=body(ALPACA, "calibration"), headers=headers)
    assert refused(r).startswith("line 1: no text field")
    r = client.post("/v1/files", content=body(ALPACA, "finetune"), headers=headers)
    assert r.status_code == 201 and r.json()["purpose"] == "finetune"


def test_deep_nesting_is_a_bad_line_not_a_crash(client, new_tenant):
    _, h = new_tenant
    deep = b"[" * 100_000 + b"]" * 100_000
    msg = refused(upload(client, h, "deep.jsonl", rows_jsonl(ALPACA[:1]) + deep + b"\n"))
    assert msg == "line 2: JSON nested too deeply"
    nested_obj = b'{"instruction": "x", "output": "y", "extra": ' + b"[" * 50_000 + b"]" * 50_000 + b"}\n"
    assert refused(upload(client, h, "deep.jsonl", nested_obj)) == "line 1: JSON nested too deeply"


def test_long_lines(client, new_tenant, monkeypatch):
    from layerprune.api import file_checks

    _, h = new_tenant
    # A large single-line file is checked (and accepted) whole; correctness only, its speed is in bench/uploads.py.
    big = {"instruction": "Summarise.", "output": "word " * 2_000_000}  # 10 MB on one line
    r = upload(client, h, "big.jsonl", json.dumps(big).encode())
    assert r.status_code == 201, r.text
    assert r.json()["num_records"] == 1 and r.json()["size_bytes"] > 10_000_000
    # Lines beyond the cap are refused rather than held in memory (the cap made small for the test).
    monkeypatch.setattr(file_checks, "MAX_LINE_BYTES", 1 << 20)
    line = json.dumps({"instruction": "x", "output": "y" * (1 << 20)}).encode()
    msg = refused(upload(client, h, "big.jsonl", rows_jsonl(ALPACA) + line + b"\n"))
    assert msg == "line 6: longer than 1 MiB"
    msg = refused(upload(client, h, "big.jsonl", rows_jsonl(ALPACA) + line))  # the last line, no newline
    assert msg == "line 6: longer than 1 MiB"
    # Plain text is decoded incrementally: a long line is fine there.
    assert upload(client, h, "big.txt", b"y" * (3 << 20), purpose="calibration").status_code == 201


def test_plain_text_records_and_encoding(client, new_tenant, service_settings):
    from layerprune.core.textdata import load_rows

    tenant, h = new_tenant
    cases = [
        b"one\n\ntwo\n",
        b"one\r\n\r\ntwo\r\nstill two\r\n\r\n\r\nthree",
        b"a\n \n\nb\n\n\n\nc\n  \n",  # a line of spaces does not separate paragraphs
        "\ufeffün\n\nïcode ✓\n".encode(),
    ]
    for data in cases:
        r = upload(client, h, "t.txt", data, purpose="calibration")
        assert r.status_code == 201, r.text
        stored = service_settings.uploads_dir / tenant / f"{r.json()['id']}.txt"
        assert r.json()["num_records"] == len(load_rows(str(stored))), data  # what core reads
    msg = refused(upload(client, h, "t.txt", b"fine\n\nbad \xc3\n", purpose="calibration"))
    assert msg.startswith("line 3: not UTF-8")
    msg = refused(upload(client, h, "t.txt", b"ok\n" + "é".encode()[:1] + b"\nnext\n", purpose="calibration"))
    assert msg.startswith("line 2: not UTF-8")
    assert refused(upload(client, h, "t.txt", b"\n  \n\n", purpose="calibration")) == "the file has no records"


def test_the_upload_verdict_matches_core_on_the_stored_file(client, new_tenant, service_settings):
    """Cross-check: what the streaming upload check says about each format equals what core's own
    reader and row validation say about the stored bytes (read back through core's code path)."""
    from layerprune.api.file_checks import read_formats
    from layerprune.core.errors import DatasetError
    from layerprune.core.finetune.data import FIELDS, validate_rows
    from layerprune.core.textdata import load_rows, load_texts

    tenant, h = new_tenant
    files = [rows_jsonl(ALPACA), rows_jsonl(DOLLY), rows_jsonl(CHAT), rows_jsonl(TEXTS),
             rows_jsonl([{"instruction": "a", "output": "b", "text": "t"}]),
             b"\xef\xbb\xbf" + rows_jsonl(ALPACA)]  # a byte-order mark
    for data in files:
        r = upload(client, h, "x.jsonl", data)
        assert r.status_code == 201, r.text
        stored = service_settings.uploads_dir / tenant / f"{r.json()['id']}.jsonl"
        outcome = read_formats(stored)
        rows = load_rows(str(stored))
        assert r.json()["num_records"] == len(rows)
        for fmt in FIELDS:
            try:
                validate_rows(rows, fmt)
                fits = True
            except DatasetError:
                fits = False
            assert (outcome[fmt] is None) == fits, (data[:60], fmt, outcome[fmt])
        try:
            load_texts(str(stored))
            text_ok = True
        except DatasetError:
            text_ok = False
        assert (outcome["texts"] is None) == text_ok, (data[:60], outcome["texts"])


# ------------------------------------------------------------------ job specs that name the file


def test_specs_are_checked_against_the_file_format(client, new_tenant):
    _, h = new_tenant
    ids = {}
    for name, data, purpose in (("alpaca", rows_jsonl(ALPACA), "finetune"), ("dolly", rows_jsonl(DOLLY), "finetune"),
                                ("chat", rows_jsonl(CHAT), "finetune"), ("texts", rows_jsonl(TEXTS), "calibration"),
                                ("plain", b"Some text.\n\nMore text.\n", "calibration")):
        r = upload(client, h, "f.txt" if name == "plain" else "f.jsonl", data, purpose=purpose)
        assert r.status_code == 201, r.text
        ids[name] = r.json()["id"]

    def job(**finetune):
        return client.post("/v1/jobs", json={**PRUNE, "finetune": finetune}, headers=h)

    assert job(dataset=ids["alpaca"], format="alpaca").status_code == 201
    assert job(dataset=ids["dolly"], format="dolly").status_code == 201
    assert job(dataset=ids["chat"], format="chat").status_code == 201
    assert job(dataset=ids["plain"], format="text").status_code == 201
    msg = refused(job(dataset=ids["dolly"], format="alpaca"), "finetune.format")
    assert f"file {ids['dolly']} is format 'dolly', not 'alpaca'" in msg and "line 1: missing field 'output'" in msg
    refused(job(dataset=ids["plain"], format="alpaca"), "finetune.format")  # plain text holds no alpaca rows
    msg = refused(job(dataset=ids["texts"], format="chat"), "finetune.format")  # {"text": …} rows fit 'text'
    assert f"file {ids['texts']} is format 'text', not 'chat'" in msg
    content = upload(client, h, "c.jsonl", rows_jsonl([{"content": "a"}]), purpose="calibration").json()["id"]
    msg = refused(job(dataset=content, format="alpaca"), "finetune.dataset")  # fits no finetune format
    assert msg == f"file {content} does not fit format 'alpaca': line 1: missing field 'instruction' (format 'alpaca')"

    def calib(ref):
        return client.post("/v1/jobs", json={"prune": {"metric": "angular", "ratio": 0.25,
                                                        "calibration": {"dataset": ref}}}, headers=h)

    assert calib(ids["texts"]).status_code == 201
    assert calib(ids["plain"]).status_code == 201
    msg = refused(calib(ids["alpaca"]), "prune.calibration.dataset")
    assert "cannot be read as calibration or perplexity text" in msg
    r = client.post("/v1/jobs", json={"evaluate": {"perplexity": {"dataset": ids["chat"]}}}, headers=h)
    refused(r, "evaluate.perplexity.dataset")
    r = client.post("/v1/jobs", json={"evaluate": {"perplexity": {"dataset": ids["plain"]}}}, headers=h)
    assert r.status_code == 201, r.text


def test_files_from_before_the_checks_keep_the_kind_check(client, new_tenant, service_settings):
    from layerprune.api.file_checks import formats_path

    tenant, h = new_tenant
    f = upload(client, h, "a.jsonl", rows_jsonl(ALPACA)).json()
    formats_path(service_settings.uploads_dir / tenant / f"{f['id']}.jsonl").unlink()  # as an older upload
    assert client.get(f"/v1/files/{f['id']}", headers=h).json()["formats"] is None
    assert client.post("/v1/jobs", json={**PRUNE, "finetune": {"dataset": f["id"], "format": "dolly"}},
                       headers=h).status_code == 201  # unknown: the worker checks the rows
    r = client.post("/v1/jobs", json={**PRUNE, "finetune": {"dataset": f["id"], "format": "text"}}, headers=h)
    refused(r, "finetune.format")


@pytest.mark.parametrize("purpose", ["finetune", "calibration"])
def test_delete_removes_the_outcome_too(client, new_tenant, service_settings, purpose):
    tenant, h = new_tenant
    data = rows_jsonl(ALPACA if purpose == "finetune" else TEXTS)
    f = upload(client, h, "a.jsonl", data, purpose=purpose).json()
    folder = service_settings.uploads_dir / tenant
    assert sorted(p.name for p in folder.iterdir()) == [f"{f['id']}.formats.json", f"{f['id']}.jsonl"]
    assert client.delete(f"/v1/files/{f['id']}", headers=h).status_code == 200
    assert list(folder.iterdir()) == []


def test_control_characters_in_the_file_name_are_replaced(client, new_tenant):
    _, h = new_tenant
    body = (b'--b0\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfinetune\r\n'
            b'--b0\r\nContent-Disposition: form-data; name="file"; filename="a\x00b\x1f.jsonl"\r\n\r\n'
            + rows_jsonl(ALPACA) + b"\r\n--b0--\r\n")  # raw bytes: httpx would percent-encode the name
    r = client.post("/v1/files", content=body, headers={**h, "Content-Type": "multipart/form-data; boundary=b0"})
    assert r.status_code == 201, r.text
    assert r.json()["filename"] == "a_b_.jsonl"


def test_malformed_multipart_bodies_are_422(client, new_tenant):
    _, h = new_tenant
    purpose = b'--b0\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfinetune\r\n'
    part = b'--b0\r\nContent-Disposition: form-data; name="file"; filename="x.jsonl"\r\n\r\n' + rows_jsonl(ALPACA)
    for ctype, body, code in (
        ("multipart/form-data; boundary=" + "b" * 300, b"--" + b"b" * 300 + b"\r\n", "invalid_multipart"),
        ("multipart/form-data; boundary=b0", purpose + part, "invalid_multipart"),  # no closing boundary
        ("multipart/form-data; boundary=b0", purpose + part[:-40], "invalid_multipart"),
        ("multipart/form-data; boundary=b0", b"junk\r\n" + purpose + part + b"\r\n--b0--\r\n", "invalid_multipart"),
    ):
        r = client.post("/v1/files", content=body, headers={**h, "Content-Type": ctype})
        assert r.status_code == 422 and r.json()["error"]["code"] == code, r.text
    assert client.get("/v1/files", headers=h).json()["data"] == []
    r = client.post("/v1/files", content=purpose + part + b"\r\n--b0--\r\n",
                    headers={**h, "Content-Type": "multipart/form-data; boundary=b0"})
    assert r.status_code == 201 and r.json()["num_records"] == len(ALPACA)

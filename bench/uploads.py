"""Seconds per MB of upload checking: single-line and many-line files of 5, 10 and 50 MB.

Each file goes through the real ``api.uploads.receive_upload`` (python-multipart, sha256, the
temporary file, every line checked against every format) as a multipart body arriving in 64 KiB
chunks, the size ASGI servers hand over. Linear checking shows as a constant s/MB across sizes
and shapes; the old re-split of the pending buffer on every chunk was quadratic in line length
(50 MB on one line: ~15 s). The baseline, in this process on the same bytes, is the irreducible
work: ``json.loads`` of each line (plain text: one UTF-8 decode); ``ratio`` = check / baseline.
Prints a table and one JSON line, with the load average (the machine is shared).

    python bench/uploads.py [--sizes 5,10,50] [--repeat 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MB = 1_000_000
CHUNK = 64 * 1024
BOUNDARY = b"benchb0undary"


def single_line_jsonl(size: int) -> bytes:
    head = b'{"instruction": "Summarise the text.", "output": "'
    return head + b"word " * ((size - len(head) - 3) // 5) + b'"}\n'


def many_line_jsonl(size: int) -> bytes:
    row = json.dumps({"instruction": "Say the number.", "input": "", "output": "x" * 120}).encode() + b"\n"
    return row * (size // len(row))


def single_line_text(size: int) -> bytes:
    return "mot été ".encode() * (size // 10)


SHAPES = {
    "jsonl, one line": ("big.jsonl", single_line_jsonl),
    "jsonl, many lines": ("big.jsonl", many_line_jsonl),
    "text, one line": ("big.txt", single_line_text),
}


def multipart(filename: str, data: bytes) -> bytes:
    return (b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'
            + (b"calibration" if filename.endswith(".txt") else b"finetune") + b"\r\n--" + BOUNDARY
            + b'\r\nContent-Disposition: form-data; name="file"; filename="' + filename.encode() + b'"\r\n\r\n'
            + data + b"\r\n--" + BOUNDARY + b"--\r\n")


async def receive(body: bytes, folder: Path) -> int:
    from starlette.requests import Request

    from layerprune.api.uploads import receive_upload

    chunks = [body[i:i + CHUNK] for i in range(0, len(body), CHUNK)]
    state = {"i": 0}

    async def next_message() -> dict:
        i = state["i"]
        state["i"] += 1
        return {"type": "http.request", "body": chunks[i], "more_body": i + 1 < len(chunks)}

    scope = {"type": "http", "method": "POST", "path": "/v1/files", "headers": [
        (b"content-type", b"multipart/form-data; boundary=" + BOUNDARY),
        (b"content-length", str(len(body)).encode())]}
    upload = await receive_upload(Request(scope, next_message), folder, 512 * 1024 * 1024)
    upload.sink.abort()  # measured: everything up to recording the file
    return upload.sink.records


def baseline(filename: str, data: bytes) -> float:
    start = time.perf_counter()
    if filename.endswith(".txt"):
        data.decode("utf-8")
    else:
        for line in data.split(b"\n"):
            if line.strip():
                json.loads(line)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="5,10,50", help="file sizes in MB")
    ap.add_argument("--repeat", type=int, default=2, help="runs per case; the fastest counts")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    folder = Path(tempfile.mkdtemp(prefix="lp-bench-uploads-"))
    rows = []
    asyncio.run(receive(multipart("warm.jsonl", many_line_jsonl(MB)), folder))  # imports, thread pool
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"{'shape':<20} {'MB':>4} {'records':>8} {'check s':>8} {'s/MB':>7} {'base s/MB':>9} {'ratio':>6} {'load':>5}")
    for shape, (filename, make) in SHAPES.items():
        for size in sizes:
            data = make(size * MB)
            body = multipart(filename, data)
            took, base = float("inf"), float("inf")
            for _ in range(args.repeat):
                start = time.perf_counter()
                records = asyncio.run(receive(body, folder))
                took = min(took, time.perf_counter() - start)
                base = min(base, baseline(filename, data))
            mb = len(data) / MB
            row = {"shape": shape, "mb": round(mb, 1), "records": records, "seconds": round(took, 3),
                   "s_per_mb": round(took / mb, 4), "baseline_s_per_mb": round(base / mb, 4),
                   "ratio": round(took / base, 2), "load1": round(os.getloadavg()[0], 2)}
            rows.append(row)
            print(f"{shape:<20} {row['mb']:>4.0f} {records:>8} {took:>8.2f} {row['s_per_mb']:>7.4f} "
                  f"{row['baseline_s_per_mb']:>9.4f} {row['ratio']:>6.2f} {row['load1']:>5.2f}")
    spread = {}
    for shape in SHAPES:
        per_mb = [r["s_per_mb"] for r in rows if r["shape"] == shape]
        spread[shape] = round(max(per_mb) / min(per_mb), 2)  # ~1 when linear
    result = {"rows": rows, "s_per_mb_max_over_min": spread, "load_average": os.getloadavg()}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

"""Receive an uploaded data file as it streams: size cap, sha256, record count, line checks.

Nothing is buffered whole. The multipart body is parsed chunk by chunk (python-multipart); the
file part's bytes go straight to a temporary file beside their final place while being hashed,
counted and checked line by line against every format (``api.file_checks``). The first bad line,
an unsupported file type, or the byte past ``max_bytes`` stops the upload (422 naming the line /
413) and the temporary file is removed; nothing is recorded.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from layerprune.api.errors import ApiError
from layerprune.api.file_checks import content_for, upload_formats

MAX_FIELD_BYTES = 1024  # the non-file form fields (purpose, format) are tiny
MAX_BOUNDARY_BYTES = 70  # RFC 2046; python-multipart itself refuses more than 256 with an exception


def too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the file is over the {limit}-byte upload limit", param="file")


class FileSink:
    """Writes one file part to ``tmp_path`` while hashing, counting and checking it."""

    def __init__(self, folder: Path, filename: str, max_bytes: int) -> None:
        self.filename = filename
        self.content, self.ext = content_for(filename)  # refuses an unsupported type before any byte
        self.max_bytes = max_bytes
        folder.mkdir(parents=True, exist_ok=True)
        self.tmp_path = folder / f".upload-{secrets.token_hex(8)}.part"
        self.fh = open(self.tmp_path, "wb")  # noqa: SIM115 - closed in finish/abort
        self.digest = hashlib.sha256()
        self.size = 0

    @property
    def records(self) -> int:
        return self.content.records

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise too_large(self.max_bytes)
        self.digest.update(data)
        self.content.feed(data)
        self.fh.write(data)

    def finish(self) -> None:
        self.content.finish()
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()

    def abort(self) -> None:
        self.fh.close()
        self.tmp_path.unlink(missing_ok=True)


@dataclass
class Upload:
    sink: FileSink
    fields: dict[str, str]


async def receive_upload(request: Request, folder: Path, max_bytes: int) -> Upload:
    """Parse a ``multipart/form-data`` body with one ``file`` part; the caller owns ``sink``."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data with a 'file' part and 'purpose'")
    if not 1 <= len(params[b"boundary"]) <= MAX_BOUNDARY_BYTES:
        raise ApiError(422, "invalid_multipart", f"the multipart boundary must be 1 to {MAX_BOUNDARY_BYTES} "
                       "characters (RFC 2046)", param="file")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + 64 * 1024:
        raise too_large(max_bytes)

    events: list[tuple[str, Any]] = []
    header_field = bytearray()
    header_value = bytearray()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        events.append(("header", (bytes(header_field).lower(), bytes(header_value))))
        header_field.clear()
        header_value.clear()

    callbacks = {
        "on_part_begin": lambda: events.append(("begin", None)),
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": lambda: events.append(("headers_done", None)),
        "on_part_data": lambda data, start, end: events.append(("data", bytes(data[start:end]))),
        "on_part_end": lambda: events.append(("end", None)),
        "on_end": lambda: events.append(("closed", None)),  # the closing boundary was read
    }
    parser = MultipartParser(params[b"boundary"], callbacks)  # type: ignore[arg-type]
    sink: FileSink | None = None
    fields: dict[str, str] = {}
    part_headers: dict[bytes, bytes] = {}
    current: str | None = None  # "file", a field name, or None (ignored part)
    value = bytearray()
    received = 0
    closed = False
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes + 1024 * 1024:  # the file's cap plus room for the other parts
                raise too_large(max_bytes)
            try:
                parser.write(chunk)
            except Exception as exc:  # noqa: BLE001 - python-multipart's parse errors
                raise ApiError(422, "invalid_multipart", f"malformed multipart body: {exc}", param="file") from None
            batch: list[bytes] = []
            for kind, payload in events:
                if kind == "begin":
                    part_headers = {}
                elif kind == "header":
                    part_headers[payload[0]] = payload[1]
                elif kind == "headers_done":
                    _, disp = parse_options_header(part_headers.get(b"content-disposition", b""))
                    name = disp.get(b"name", b"").decode("utf-8", "replace")
                    if name == "file":
                        if sink is not None:
                            raise ApiError(422, "invalid_request", "send exactly one 'file' part", param="file")
                        filename = disp.get(b"filename", b"upload").decode("utf-8", "replace")
                        filename = os.path.basename(filename.replace("\\", "/"))[:255] or "upload"
                        # Only a label: control characters (a NUL cannot even be stored) become "_".
                        filename = "".join("_" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in filename)
                        sink = FileSink(folder, filename, max_bytes)
                        current = "file"
                        if "purpose" in fields:  # known already: stop at the first line no allowed format fits
                            sink.content.formats.expect(upload_formats(fields))
                    else:
                        current = name
                        value = bytearray()
                elif kind == "data":
                    if current == "file":
                        batch.append(payload)
                    elif current is not None:
                        value.extend(payload)
                        if len(value) > MAX_FIELD_BYTES:
                            raise ApiError(422, "invalid_request", f"field '{current}' is too long", param=current)
                elif kind == "end":
                    if current not in (None, "file"):
                        fields[current] = value.decode("utf-8", "replace")
                    current = None
                elif kind == "closed":
                    closed = True
            events.clear()
            if batch and sink is not None:
                # Hashing, JSON checks and disk writes off the event loop.
                await run_in_threadpool(_write_all, sink, batch)
        parser.finalize()
        if sink is None:
            raise ApiError(422, "invalid_request", "a 'file' part is required", param="file")
        if not closed:  # a cut-off body would otherwise be stored as a shorter file
            raise ApiError(422, "invalid_multipart", "the multipart body ends before its closing boundary",
                           param="file")
        await run_in_threadpool(sink.finish)
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    return Upload(sink, fields)


def _write_all(sink: FileSink, batch: list[bytes]) -> None:
    for data in batch:
        sink.write(data)

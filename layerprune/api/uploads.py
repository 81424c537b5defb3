"""Receive an uploaded data file as it streams: size cap, sha256, record count, line checks.

Nothing is buffered whole. The multipart body is parsed chunk by chunk by python-multipart's
streaming ``MultipartParser``, whose callbacks (``FormReceiver``) send the file part's bytes
straight to a temporary file beside their final place while they are hashed, counted and
checked line by line against every format (``api.file_checks``). The first bad line,
an unsupported file type, or the byte past ``max_bytes`` stops the upload (422 naming the line /
413) and the temporary file is removed; nothing is recorded.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from python_multipart.exceptions import FormParserError
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


class FormReceiver:
    """python-multipart's callbacks for one upload body: the ``file`` part streams into a
    :class:`FileSink` as the parser finds its bytes, every other part is a small text field.

    The parser calls these from ``MultipartParser.write`` (run off the event loop), so the sink's
    hashing, checks and disk writes happen there too; an ``ApiError`` raised here stops the parse.
    """

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.sink: FileSink | None = None
        self.fields: dict[str, str] = {}
        self.closed = False  # the closing boundary was read
        self._headers: dict[bytes, bytes] = {}
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._part: str | None = None  # "file", a field's name, or None between parts
        self._value = bytearray()

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {"on_part_begin": self.on_part_begin, "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished, "on_part_data": self.on_part_data,
                "on_part_end": self.on_part_end, "on_end": self.on_end}

    def on_part_begin(self) -> None:
        self._headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field.extend(data[start:end])

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value.extend(data[start:end])

    def on_header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        _, disp = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        self._part = name
        self._value = bytearray()
        if name != "file":
            return
        if self.sink is not None:
            raise ApiError(422, "invalid_request", "send exactly one 'file' part", param="file")
        filename = disp.get(b"filename", b"upload").decode("utf-8", "replace")
        filename = os.path.basename(filename.replace("\\", "/"))[:255] or "upload"
        # Only a label: control characters (a NUL cannot even be stored) become "_".
        filename = "".join("_" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in filename)
        self.sink = FileSink(self.folder, filename, self.max_bytes)
        if "purpose" in self.fields:  # known already: stop at the first line no allowed format fits
            self.sink.content.formats.expect(upload_formats(self.fields))

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part == "file":
            assert self.sink is not None
            self.sink.write(data[start:end])
        elif self._part is not None:
            self._value.extend(data[start:end])
            if len(self._value) > MAX_FIELD_BYTES:
                raise ApiError(422, "invalid_request", f"field '{self._part}' is too long", param=self._part)

    def on_part_end(self) -> None:
        if self._part not in (None, "file"):
            self.fields[self._part] = self._value.decode("utf-8", "replace")
        self._part = None

    def on_end(self) -> None:
        self.closed = True


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

    receiver = FormReceiver(folder, max_bytes)
    parser = MultipartParser(params[b"boundary"], receiver.callbacks())  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes + 1024 * 1024:  # the file's cap plus room for the other parts
                raise too_large(max_bytes)
            if chunk:
                # Parsing, hashing, JSON checks and disk writes off the event loop.
                await run_in_threadpool(_parse, parser, chunk)
        parser.finalize()
        if receiver.sink is None:
            raise ApiError(422, "invalid_request", "a 'file' part is required", param="file")
        if not receiver.closed:  # a cut-off body would otherwise be stored as a shorter file
            raise ApiError(422, "invalid_multipart", "the multipart body ends before its closing boundary",
                           param="file")
        await run_in_threadpool(receiver.sink.finish)
    except BaseException:
        if receiver.sink is not None:
            receiver.sink.abort()
        raise
    return Upload(receiver.sink, receiver.fields)


def _parse(parser: MultipartParser, chunk: bytes) -> None:
    try:
        parser.write(chunk)
    except FormParserError as exc:  # python-multipart's errors for a malformed body
        raise ApiError(422, "invalid_multipart", f"malformed multipart body: {exc}", param="file") from None

"""What an uploaded file holds: every line checked against every format, in one linear pass.

A file is JSONL (``.jsonl``, ``.ndjson``, ``.json``: one JSON object a line) or plain UTF-8 text
(``.txt``: paragraphs separated by blank lines, as core reads it); any other name is refused.
Each record is checked against every format the service reads files as, with core's own rules
(one source for the format facts):

* the fine-tuning formats of ``core.finetune.data`` (``FIELDS`` and ``row_problem``), and
* ``texts``: calibration and perplexity text as ``core.textdata.load_texts`` reads it (the first
  record's text field, then that field in every record), and
* ``gsm8k``: GSM8K train records (``question``, ``answer``), the pool stock ``gsm8k`` draws its
  examples from (``evaluate.gsm8k_train``).

A format drops out at the first record that does not fit it; the upload is refused (422 naming
that line) once every format its purpose allows has dropped out, as soon as the purpose is known.
The outcome per format (fits, or the first line that does not) is kept beside the file, so a job
spec that names the file is checked against it at submit time without reading the file again.

Linear time: each chunk is split once and only the unfinished last line is carried over, so no
byte is scanned twice however long the lines are; a line longer than ``MAX_LINE_BYTES`` is refused
rather than held in memory.
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from layerprune.api.errors import ApiError
from layerprune.core.evaluate.generative_data import gsm8k_row_problem
from layerprune.core.finetune.data import FIELDS, row_problem
from layerprune.core.textdata import TEXT_FIELDS, text_field

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
TEXT_SUFFIXES = (".txt",)
MAX_LINE_BYTES = 64 * 1024 * 1024
BOM = b"\xef\xbb\xbf"

TEXTS = "texts"  # calibration / perplexity text (core.textdata.load_texts)
GSM8K = "gsm8k"  # the few-shot pool of stock gsm8k (evaluate.gsm8k_train; core.evaluate.generative_data)
# The formats a file of each purpose may be used as; at least one must fit every record.
PURPOSE_FORMATS: dict[str, tuple[str, ...]] = {
    "finetune": tuple(FIELDS),
    "calibration": (TEXTS,),
    "evaluate": (TEXTS, GSM8K),
}


def bad_line(line_no: int, why: str) -> ApiError:
    return ApiError(422, "invalid_file", f"line {line_no}: {why}", param="file")


def upload_formats(fields: dict[str, str]) -> tuple[str, ...]:
    """The formats an upload with these form fields must fit one of (422 naming the bad field)."""
    purpose = fields.get("purpose", "")
    if purpose not in PURPOSE_FORMATS:
        raise ApiError(422, "invalid_request", f"purpose must be one of {', '.join(PURPOSE_FORMATS)}",
                       param="purpose")
    declared = fields.get("format")
    if declared is None or declared == "":
        return PURPOSE_FORMATS[purpose]
    if declared not in PURPOSE_FORMATS[purpose] or declared == TEXTS:
        allowed = [f for f in PURPOSE_FORMATS[purpose] if f != TEXTS]
        if not allowed:
            raise ApiError(422, "invalid_request", f"'format' applies to purpose 'finetune' only, not '{purpose}'",
                           param="format")
        raise ApiError(422, "invalid_request", f"format must be one of {', '.join(allowed)}", param="format")
    return (declared,)


class _TextsCheck:
    """load_texts' rule: the first record names the text field; every record must hold it (load_texts
    itself drops a record without it silently: at the door that is a mistake worth naming)."""

    def __init__(self) -> None:
        self.field: str | None = None

    def __call__(self, row: dict[str, Any]) -> str | None:
        if self.field is None:
            self.field = text_field(row)
            if self.field is None:
                return f"no text field for calibration or perplexity text (one of {', '.join(TEXT_FIELDS)})"
        if not isinstance(row.get(self.field), str):
            return f"field '{self.field}' (the text field of the first record) is missing or not a string"
        return None


def _row_checks() -> dict[str, Callable[[dict[str, Any]], str | None]]:
    """One check per format, keyed as in ``PURPOSE_FORMATS`` (a new core format is a new key)."""
    checks: dict[str, Callable[[dict[str, Any]], str | None]] = {fmt: partial(row_problem, fmt=fmt) for fmt in FIELDS}
    checks[TEXTS] = _TextsCheck()
    checks[GSM8K] = gsm8k_row_problem
    return checks


class _Formats:
    """Which formats still fit the records seen so far, and where each one stopped fitting."""

    def __init__(self) -> None:
        self.misfits: dict[str, tuple[int | None, str]] = {}  # format -> (line, why)
        self.allowed: tuple[str, ...] | None = None  # set once the purpose is known

    def expect(self, formats: tuple[str, ...]) -> None:
        self.allowed = formats
        self.check()

    def check(self) -> None:
        """Refuse the upload once no allowed format fits (the line where the last one dropped out)."""
        if self.allowed is None or any(f not in self.misfits for f in self.allowed):
            return
        last = max(self.allowed, key=self._reach)
        message = self._where(last)
        others = []
        for fmt in self.allowed:
            if fmt != last:
                line = self.misfits[fmt][0]
                others.append(f"'{fmt}' (line {line})" if line is not None else f"'{fmt}'")
        if others:
            message += "; no other format fits either: " + ", ".join(others)
        raise ApiError(422, "invalid_file", message, param="file")

    def _where(self, fmt: str) -> str:
        line, why = self.misfits[fmt]
        return f"line {line}: {why}" if line is not None else why

    def _reach(self, fmt: str) -> tuple[int, bool]:
        # The format that fitted longest is what the file was meant to be; on the same line, one
        # whose fields were there (a wrong value) over one whose fields were missing.
        line, why = self.misfits[fmt]
        return line or 0, not why.startswith(("missing field", "no text field"))

    def outcome(self, all_formats: list[str]) -> dict[str, str | None]:
        """``{format: None (fits every record) or "line n: why"}`` for every format."""
        return {fmt: self._where(fmt) if fmt in self.misfits else None for fmt in all_formats}


class JsonlContent:
    """JSONL: every line UTF-8, blank or a JSON object; each object checked against every format."""

    def __init__(self) -> None:
        self.pending = bytearray()  # the unfinished last line, carried to the next chunk
        self.line_no = 0
        self.records = 0
        self.checks = _row_checks()
        self.formats = _Formats()

    def feed(self, data: bytes) -> None:
        parts = data.split(b"\n")
        self._hold(parts[0])
        if len(parts) == 1:
            return
        self._line(self.pending)
        self.pending = bytearray()
        for raw in parts[1:-1]:
            if len(raw) > MAX_LINE_BYTES:
                raise bad_line(self.line_no + 1, f"longer than {MAX_LINE_BYTES >> 20} MiB")
            self._line(raw)
        self._hold(parts[-1])

    def finish(self) -> None:
        if self.pending:
            self._line(self.pending)
            self.pending = bytearray()
        if self.records == 0:
            raise ApiError(422, "invalid_file", "the file has no records", param="file")
        self.formats.check()

    def outcome(self) -> dict[str, str | None]:
        return self.formats.outcome(list(self.checks))

    def _hold(self, data: bytes) -> None:
        if len(self.pending) + len(data) > MAX_LINE_BYTES:
            raise bad_line(self.line_no + 1, f"longer than {MAX_LINE_BYTES >> 20} MiB")
        self.pending += data

    def _line(self, raw: bytes | bytearray) -> None:
        self.line_no += 1
        if self.line_no == 1 and raw[:3] == BOM:
            raw = raw[3:]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise bad_line(self.line_no, f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
        if not text.strip():
            return
        try:
            value = json.loads(text)
        except RecursionError:  # not a ValueError: nesting deeper than the interpreter's limit
            raise bad_line(self.line_no, "JSON nested too deeply") from None
        except json.JSONDecodeError as exc:  # its own "line 1 column n" would contradict our line number
            raise bad_line(self.line_no, f"not valid JSON: {exc.msg} (character {exc.pos + 1})") from None
        if not isinstance(value, dict):
            raise bad_line(self.line_no, f"a JSON {type(value).__name__}, expected an object")
        self.records += 1
        for fmt, check in self.checks.items():
            if fmt not in self.formats.misfits:
                why = check(value)
                if why is not None:
                    self.formats.misfits[fmt] = (self.line_no, why)
        self.formats.check()


class TextContent:
    """Plain text: UTF-8, decoded incrementally (a line is never held whole); records are the
    paragraphs core reads (groups of lines between empty lines, holding some non-space text)."""

    def __init__(self) -> None:
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.line_no = 1
        self.line_bytes = 0
        self.line_last = b""
        self.line_has_text = False
        self.paragraph_has_text = False
        self.records = 0
        self.checks = _row_checks()
        self.formats = _Formats()
        # Paragraphs are {"text": paragraph} rows: whatever reads that shape fits, nothing else does.
        sample = {"text": "a paragraph"}
        for fmt, check in self.checks.items():
            why = check(sample)
            if why is not None:
                self.formats.misfits[fmt] = (None, f"a plain-text file holds paragraphs, not format '{fmt}' "
                                                   "records: upload JSONL")

    def feed(self, data: bytes) -> None:
        parts = data.split(b"\n")
        self._part(parts[0])
        for part in parts[1:]:
            self._end_line()
            self._part(part)

    def finish(self) -> None:
        self._end_line()
        if self.paragraph_has_text:
            self.records += 1
        if self.records == 0:
            raise ApiError(422, "invalid_file", "the file has no records", param="file")
        self.formats.check()

    def outcome(self) -> dict[str, str | None]:
        return self.formats.outcome(list(self.checks))

    def _part(self, data: bytes) -> None:
        if not data:
            return
        try:
            text = self.decoder.decode(data)
        except UnicodeDecodeError as exc:
            raise bad_line(self.line_no, f"not UTF-8 ({exc.reason})") from None
        self.line_bytes += len(data)
        self.line_last = data[-1:]
        if not self.line_has_text and text.strip():
            self.line_has_text = True

    def _end_line(self) -> None:
        try:
            self.decoder.decode(b"", final=True)  # a sequence cut short by the end of the line
        except UnicodeDecodeError as exc:
            raise bad_line(self.line_no, f"not UTF-8 ({exc.reason})") from None
        self.decoder.reset()
        # core splits on "\n\n" after turning "\r\n" into "\n": only an empty line separates.
        empty = self.line_bytes == 0 or (self.line_bytes == 1 and self.line_last == b"\r")
        if empty:
            if self.paragraph_has_text:
                self.records += 1
            self.paragraph_has_text = False
        elif self.line_has_text:
            self.paragraph_has_text = True
        self.line_no += 1
        self.line_bytes = 0
        self.line_has_text = False


Content = JsonlContent | TextContent


def content_for(filename: str) -> tuple[Content, str]:
    """The checker for a file of this name and the extension it is stored under; 422 otherwise."""
    lower = filename.lower()
    if lower.endswith(JSONL_SUFFIXES):
        return JsonlContent(), "jsonl"
    if lower.endswith(TEXT_SUFFIXES):
        return TextContent(), "txt"
    suffix = os.path.splitext(lower)[1] or "(none)"
    raise ApiError(422, "invalid_file", f"unsupported file type {suffix} of '{filename}': upload JSONL "
                   "(.jsonl, .ndjson or .json: one JSON object a line) or plain UTF-8 text (.txt)", param="file")


# ------------------------------------------------------------------ the outcome, beside the file


def formats_path(storage_path: str | Path) -> Path:
    return Path(storage_path).with_suffix(".formats.json")


def write_formats(storage_path: str | Path, outcome: dict[str, str | None]) -> Path:
    path = formats_path(storage_path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"formats": outcome}), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_formats(storage_path: str | Path) -> dict[str, str | None] | None:
    """A stored file's outcome per format; None for files uploaded before these checks existed."""
    try:
        data = json.loads(formats_path(storage_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    formats = data.get("formats") if isinstance(data, dict) else None
    return formats if isinstance(formats, dict) else None

"""The few fields the meter reads from a multipart/form-data request (an image edit, a transcription).

Bounded and copy-free: the body is searched for its boundaries in place, only short text fields
and the first bytes of a file are copied out, and nothing is ever written back (the upstream gets
the client's bytes). Runs on the writer thread, never on the request path.
"""

from __future__ import annotations

import re

MAX_FIELD_BYTES = 1024        # a model name, a size, a response_format: longer values are not ours to read
MAX_PART_HEAD_BYTES = 8 * 1024
MAX_PARTS = 1000
FILE_HEAD_BYTES = 4096        # of a file part: enough for an audio file's header
_BOUNDARY = re.compile(r'boundary="?([^";,\s]{1,200})"?', re.IGNORECASE)
_NAME = re.compile(rb'\bname="([^"]{1,200})"', re.IGNORECASE)
_FILENAME = re.compile(rb'\bfilename\*?=', re.IGNORECASE)


def is_multipart(content_type: str) -> bool:
    return content_type.lower().lstrip().startswith("multipart/form-data")


def read_fields(body: bytes, content_type: str) -> dict:
    """Short text fields by name, and each file field as {"bytes": its length, "head": its first bytes}."""
    found = _BOUNDARY.search(content_type)
    if found is None:
        return {}
    boundary = found.group(1).encode("latin-1")
    delimiter = b"\r\n--" + boundary
    start = body.find(b"--" + boundary)
    if start < 0:
        return {}
    fields: dict = {}
    pos = start + 2 + len(boundary)
    for _ in range(MAX_PARTS):
        if body.startswith(b"--", pos):  # the closing delimiter
            break
        head_end = body.find(b"\r\n\r\n", pos, pos + MAX_PART_HEAD_BYTES)
        end = body.find(delimiter, head_end + 4) if head_end >= 0 else -1
        if end < 0:
            break
        _take(fields, body[pos:head_end], body, head_end + 4, end)
        pos = end + len(delimiter)
    return fields


def _take(fields: dict, head: bytes, body: bytes, start: int, end: int) -> None:
    name = _NAME.search(head)
    if name is None:
        return
    key = name.group(1).decode("utf-8", "replace")
    if key in fields:
        return
    if _FILENAME.search(head):
        fields[key] = {"bytes": end - start, "head": body[start:min(end, start + FILE_HEAD_BYTES)]}
    elif end - start <= MAX_FIELD_BYTES:
        fields[key] = body[start:end].decode("utf-8", "replace")

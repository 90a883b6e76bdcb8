"""How long an uploaded audio file plays, when its header says so cheaply: WAV (RIFF) only.

Other formats (mp3, m4a, ogg, webm, flac) would need their frames decoded; a transcription of
one whose response does not report its duration is recorded unpriced, with the reason.
"""

from __future__ import annotations

import struct
from decimal import Decimal

_MAX_SECONDS = Decimal(24 * 3600)  # no upload the API takes (25 MB) plays for longer


def wav_seconds(head: bytes, file_bytes: int) -> Decimal | None:
    """The duration of a WAV file from its first bytes and its length; None if it is not one we can read."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, byte_rate = 12, 0
    while pos + 8 <= len(head):
        kind, size = head[pos:pos + 4], struct.unpack_from("<I", head, pos + 4)[0]
        if kind == b"fmt " and pos + 16 <= len(head):
            byte_rate = struct.unpack_from("<I", head, pos + 16)[0]
        elif kind == b"data":
            if not byte_rate:
                return None
            # A streamed WAV may leave the size unset (0 or 0xFFFFFFFF): then the rest of the file.
            available = file_bytes - (pos + 8)
            data = size if 0 < size <= available else available
            seconds = (Decimal(max(data, 0)) / byte_rate).quantize(Decimal("0.001"))
            return seconds if seconds <= _MAX_SECONDS else None
        pos += 8 + size + (size & 1)
    return None

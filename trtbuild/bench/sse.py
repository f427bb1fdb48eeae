"""A small incremental Server-Sent Events parser over raw bytes (the online client's hot path).

Bytes go in as the socket delivers them; complete events come out with their `data` payload (several
data lines joined by "\\n", comments and other fields dropped), so each event can be timestamped at
the read that completed it rather than when a line-based reader got around to it.
"""

from __future__ import annotations


class SSEParser:
    __slots__ = ("_buf",)

    def __init__(self):
        self._buf = b""

    def feed(self, data: bytes) -> list[str]:
        """Add bytes; return the data payloads of the events they completed (possibly none)."""
        buf = self._buf + data if self._buf else data
        if b"\r" in buf:  # CRLF or CR line endings: normalise (a lone trailing CR waits for its LF)
            keep_cr = buf.endswith(b"\r")
            buf = buf.replace(b"\r\n", b"\n")
            if keep_cr:
                buf = buf[:-1].replace(b"\r", b"\n") + b"\r"
            else:
                buf = buf.replace(b"\r", b"\n")
        events = []
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            payload = _data_of(buf[start:end])
            if payload is not None:
                events.append(payload)
            start = end + 2
        self._buf = buf[start:]
        return events

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet terminated by a blank line."""
        return self._buf


def _data_of(block: bytes) -> str | None:
    if block.startswith(b"data:") and b"\n" not in block:  # the common case: one data line
        value = block[5:]
        return (value[1:] if value.startswith(b" ") else value).decode()
    lines = []
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            lines.append(value[1:] if value.startswith(b" ") else value)
        elif line == b"data":
            lines.append(b"")
    return b"\n".join(lines).decode() if lines else None

"""Passwords out of what we print and log: a catalog URL or connection string is echoed by
messages, and DuckDB's errors quote the connection string whole, password included."""

from __future__ import annotations

import re

_URL_PASSWORD = re.compile(r"(://[^:/@\s\"']*:)[^\s\"']*@")  # scheme://user:PASSWORD@host
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('[^']*'|[^\s&\"']+)", re.IGNORECASE)  # password=..., ?password=


def hide_passwords(text: str) -> str:
    """``text`` with every URL's or connection string's password replaced by ``***``."""
    return _KEYWORD_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", text))


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An error's first line for a message or a log line: passwords hidden, at most ``limit`` characters."""
    text = hide_passwords(str(exc).strip())
    return text.splitlines()[0][:limit] if text else type(exc).__name__

"""A proxy's CPU and memory, summed over its processes: `aispendtrack proxy` with several workers
is a parent, the data's owner and a process per worker, and each one's share counts."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TextIO, TypeVar

T = TypeVar("T")


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += parents.get(found[-1], [])
    return found


def cpu_s(pid: int) -> float:
    def seconds(stat) -> float:
        fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return sum(_each(pid, "stat", seconds))


def rss_kib(pid: int) -> int:
    def kib(status) -> int:
        return next((int(line.split()[1]) for line in status if line.startswith("VmRSS:")), 0)
    return sum(_each(pid, "status", kib))


def _each(pid: int, name: str, read: Callable[[TextIO], T]) -> list[T]:
    """``read`` of /proc/<member>/``name`` for each process of the tree still running."""
    found = []
    for member in tree(pid):
        try:
            with open(f"/proc/{member}/{name}") as file:
                found.append(read(file))
        except OSError:  # ended meanwhile
            continue
    return found

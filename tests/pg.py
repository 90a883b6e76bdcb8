"""A throwaway PostgreSQL cluster for the shared-mode tests: Debian's server, in a temp directory.

PostgreSQL refuses to run as root, so when the tests run as root the cluster runs as the
``postgres`` user (``runuser``). Trust authentication on 127.0.0.1 only; the cluster and its
directory are removed when the tests end.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from .helpers import free_port


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found and shutil.which(name):
        found = [str(shutil.which(name))]
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (Debian: apt-get install postgresql)")
    return found[-1]


def _as_owner(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


class Cluster:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="aispendtrack-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
        subprocess.run(_as_owner([_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "aispend",
                                  "--no-sync"]), check=True, capture_output=True)
        self.start()

    def start(self) -> None:
        subprocess.run(_as_owner([
            _bin("pg_ctl"), "start", "-D", str(self.data), "-l", str(self.dir / "server.log"), "-w", "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"]),
            check=True, capture_output=True)

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(_as_owner([_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"]),
                       capture_output=True)

    def url(self, database: str) -> str:
        return f"postgresql://aispend@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url("postgres"), autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def dump(self, database: str) -> bytes:
        return subprocess.run([_bin("pg_dump"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "aispend", database],
                              check=True, capture_output=True).stdout

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=1).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

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
    def __init__(self, link: Link | None = None) -> None:
        """``link``: run the server on the far side of it (its network namespace), else on 127.0.0.1."""
        self.dir = Path(tempfile.mkdtemp(prefix="aispendtrack-pg-"))
        self.data = self.dir / "data"
        self.link = link
        self.host = link.far if link else "127.0.0.1"
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
        subprocess.run(_as_owner([_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "aispend",
                                  "--no-sync"]), check=True, capture_output=True)
        if link:
            with open(self.data / "pg_hba.conf", "a") as hba:
                hba.write(f"host all all {link.near}/32 trust\n")
        self.start()

    def start(self) -> None:
        inside = ["ip", "netns", "exec", self.link.namespace] if self.link else []
        subprocess.run(inside + _as_owner([
            _bin("pg_ctl"), "start", "-D", str(self.data), "-l", str(self.dir / "server.log"), "-w", "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses={self.host} -c fsync=off -c max_connections=200"]),
            check=True, capture_output=True)

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(_as_owner([_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"]),
                       capture_output=True)

    def url(self, database: str) -> str:
        return f"postgresql://aispend@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url("postgres"), autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def dump(self, database: str) -> bytes:
        return subprocess.run([_bin("pg_dump"), "-h", self.host, "-p", str(self.port), "-U", "aispend", database],
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


class Link:
    """A network link that can be cut: a network namespace of its own joined to this one by a pair
    of virtual Ethernet devices, ``near`` the address on this side, ``far`` on the other. Cut, the
    far side takes its device down: what is sent over it is lost, with no reset or error coming back,
    as on a cut network. Needs root (CAP_NET_ADMIN)."""

    def __init__(self) -> None:
        tag = os.getpid() % 100_000
        self.namespace, self.device = f"aispendtrack-{tag}", f"ast{tag}"
        self.near, self.far = f"10.213.{tag % 250}.1", f"10.213.{tag % 250}.2"
        self._run("ip", "netns", "add", self.namespace)
        self._run("ip", "link", "add", f"{self.device}a", "type", "veth", "peer", "name", f"{self.device}b")
        self._run("ip", "link", "set", f"{self.device}b", "netns", self.namespace)
        self._run("ip", "addr", "add", f"{self.near}/30", "dev", f"{self.device}a")
        self._run("ip", "link", "set", f"{self.device}a", "up")
        self._far("ip", "addr", "add", f"{self.far}/30", "dev", f"{self.device}b")
        self.mend()

    def cut(self) -> None:
        self._far("ip", "link", "set", f"{self.device}b", "down")

    def mend(self) -> None:
        self._far("ip", "link", "set", f"{self.device}b", "up")

    def remove(self) -> None:
        subprocess.run(["ip", "link", "del", f"{self.device}a"], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True)

    def _far(self, *args: str) -> None:
        self._run("ip", "netns", "exec", self.namespace, *args)

    @staticmethod
    def _run(*args: str) -> None:
        subprocess.run(args, check=True, capture_output=True)

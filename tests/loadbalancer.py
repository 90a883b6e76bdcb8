"""A real load balancer for the shared-mode tests: Debian's HAProxy, round-robin over replicas.

It checks each replica's ``/aispendtrack/health`` every 200 ms, takes a replica out after two
failed checks (one slow answer on a busy machine is not a dead replica) and back after two good
ones, and retries a request on another replica when the connection itself fails (never once a
request was sent: a call is not repeated).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from .helpers import free_port

CONFIG = """
global
    maxconn 2000
defaults
    mode http
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    retries 3
    retry-on conn-failure empty-response
    option redispatch
frontend llm
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /aispendtrack/health
    timeout check 1s
    default-server inter 200ms fall 2 rise 2
{servers}
"""


class LoadBalancer:
    def __init__(self, ports: list[int]) -> None:
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(binary).exists():
            raise RuntimeError("HAProxy is not installed (Debian: apt-get install haproxy)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        servers = "\n".join(f"    server r{i} 127.0.0.1:{port} check" for i, port in enumerate(ports))
        self.dir = Path(tempfile.mkdtemp(prefix="aispendtrack-lb-"))
        config = self.dir / "haproxy.cfg"
        config.write_text(CONFIG.format(port=self.port, servers=servers))
        self.process = subprocess.Popen([binary, "-f", str(config), "-db"], stdout=subprocess.DEVNULL,
                                        stderr=open(self.dir / "haproxy.log", "wb"))
        deadline = time.monotonic() + 10
        while True:
            try:
                if httpx.get(f"{self.url}/aispendtrack/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"HAProxy did not start: {(self.dir / 'haproxy.log').read_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

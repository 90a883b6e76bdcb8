"""Whole-host throughput of AiSpendTrack beside its peers, the LiteLLM proxy and Portkey's gateway, in one run.

    .venv/bin/python -m bench.peers --setup   # once: the peers, in bench/.peers/ (git-ignored)
    .venv/bin/python -m bench.peers           # about 30 minutes on 2 cores (LiteLLM serves ~30 req/s here)
    .venv/bin/python -m bench.peers --rounds 3 --requests 1500   # about 15 minutes: docs/benchmarks.md's run
    .venv/bin/python -m bench.peers --quick   # a smoke run

bench/workers.py's targets (bare mitmdump, ours with `--workers 1` and `--workers 2`, every call
metered) and two more in the same interleaved rounds, against the same canned upstream of
bench/loopback.py, plain JSON at 32 and 128 connections:

- the LiteLLM proxy (`litellm[proxy]`), a config.yaml routing `gpt-4o` to the upstream as an
  OpenAI-compatible `api_base`, no database, no callbacks, no master key; with as many workers as
  the host has cores, which LiteLLM's production guide recommends (`--num_workers`), and a master
  key (it refuses to start without one); `--timeout_worker_healthcheck 180`, as uvicorn's default
  5 s killed workers still importing LiteLLM on this loaded host, over and over;
- Portkey's open-source gateway (npm `@portkey-ai/gateway`, run with node, one process as shipped),
  each request carrying `x-portkey-provider: openai` and `x-portkey-custom-host` naming the upstream.

Neither peer stores a row per call here (no database, no logging sink): they only forward. Each
target must answer one call with 200 and the upstream's reply before the rounds.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

from . import workers
from .proxy_overhead import ROOT, free_port, wait_for_port

PEERS = ROOT / "bench" / ".peers"
# The newest litellm whose [proxy] extra installs from PyPI here (1.108+ name proxy packages not published).
LITELLM = "litellm[proxy]==1.106.12"
PORTKEY = "@portkey-ai/gateway@1.15.2"
LITELLM_EXE = PEERS / "venv" / "bin" / "litellm"
PORTKEY_SERVER = PEERS / "node" / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"


def setup() -> None:
    """A venv with LiteLLM's proxy and a node_modules with Portkey's gateway, both under bench/.peers/."""
    PEERS.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(PEERS / "venv")], check=True)
    subprocess.run([str(PEERS / "venv" / "bin" / "pip"), "install", "-q", LITELLM], check=True)
    subprocess.run(["npm", "install", "--prefix", str(PEERS / "node"), PORTKEY], check=True)


def litellm(upstream_port: int) -> tuple[str, workers.Target, Path]:
    folder = Path(tempfile.mkdtemp(prefix="aispendtrack-litellm-"))
    config = folder / "config.yaml"
    # LiteLLM refuses to start without a master key; its own header carries it, as the request's
    # authorization is the upstream's.
    key = "sk-" + secrets.token_hex(32)
    config.write_text(f"""model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_base: http://127.0.0.1:{upstream_port}/v1
      api_key: sk-bench
litellm_settings:
  set_verbose: false
  telemetry: false
general_settings:
  master_key: {key}
  litellm_key_header_name: x-litellm-key
""")
    count, port, log = os.cpu_count() or 1, free_port(), folder / "litellm.log"
    # The bundled price map, not a download at start (this host reaches no such site).
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    process = _start([str(LITELLM_EXE), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                      "--num_workers", str(count), "--timeout_worker_healthcheck", "180"], log, env)
    return f"LiteLLM proxy ({count} workers)", (port, process, {"x-litellm-key": f"Bearer {key}"}), log


def portkey(upstream_port: int) -> tuple[str, workers.Target, Path]:
    folder = Path(tempfile.mkdtemp(prefix="aispendtrack-portkey-"))
    port, log = free_port(), folder / "portkey.log"
    process = _start(["node", str(PORTKEY_SERVER), f"--port={port}", "--headless"], log,
                     {**os.environ, "NODE_ENV": "production"})
    headers = {"x-portkey-provider": "openai", "x-portkey-custom-host": f"http://127.0.0.1:{upstream_port}/v1"}
    return "Portkey gateway", (port, process, headers), log


def _start(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent, env=env)


def start_peers(upstream_port: int, targets: dict[str, workers.Target]) -> None:
    """Each peer, once it listens, into ``targets``; one that exits or never listens ends the run with its log."""
    for starter in (litellm, portkey):
        name, target, log = starter(upstream_port)
        targets[name] = target
        try:
            wait_for_port(target[0], target[1], timeout=180)
        except RuntimeError as exc:
            raise SystemExit(f"{name} did not start ({exc}); its log, {log}:\n{log.read_text()[-3000:]}") from exc


def missing() -> list[str]:
    return [str(path) for path in (LITELLM_EXE, PORTKEY_SERVER) if not path.exists()]


def main() -> None:
    parser = workers.arguments(__doc__.splitlines()[0])
    parser.add_argument("--setup", action="store_true", help=f"install the peers into {PEERS.relative_to(ROOT)}")
    args = parser.parse_args()
    if args.setup:
        setup()
        return
    if absent := missing():
        sys.exit(f"the peers are not installed ({', '.join(absent)} missing): run "
                 f"`.venv/bin/python -m bench.peers --setup` first")
    workers.measure(args, start_peers)


if __name__ == "__main__":
    main()

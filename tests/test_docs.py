"""The README and the docs as a newcomer follows them: every command shown works as written.

The README's first loop and main commands run in order on a fresh data directory, against the
fake provider on 127.0.0.1 where a provider is needed (the proxy gets `--openai-upstream`, the only
change to a command line besides ports); every `aispendtrack` line anywhere in the docs must at
least parse, options included. The HAProxy and PostgreSQL snippets of docs/deploy.md run too.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click
import httpx
import psycopg
import pytest
import yaml
from aiosmtpd.controller import Controller

from cli.main import cli

from .helpers import free_port
from .pg import Cluster
from .upstream import FakeProvider

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent  # the checkout's .venv/bin when the tests run as README.md says
HAPROXY = "/usr/sbin/haproxy"


def blocks(source: Path | str, lang: str) -> list[str]:
    text = source.read_text(encoding="utf-8") if isinstance(source, Path) else source
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def command_lines(block: str) -> list[str]:
    """The block's commands: continuation lines and quotes over lines joined, comments and blank lines dropped."""
    commands, pending = [], ""
    for line in block.replace("\\\n", " ").splitlines():
        pending = f"{pending}\n{line}" if pending else line
        try:
            if shlex.split(pending, comments=True):
                commands.append(pending)
            pending = ""
        except ValueError:  # a quote still open: the command goes on
            continue
    return commands


def split(line: str) -> tuple[dict[str, str], list[str]]:
    """`A=1 B=2 prog args & # comment` -> ({A: 1, B: 2}, [prog, args])."""
    words = shlex.split(line, comments=True)
    if words[-1] == "&":  # run in the background
        words.pop()
    env = {}
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    return env, words


def parse(args: list[str]) -> click.Context:
    """Parse an `aispendtrack` command line as click would run it, without running it."""
    ctx = cli.make_context("aispendtrack", list(args))
    command: click.Command = cli
    while isinstance(command, click.Group):
        rest = [*ctx._protected_args, *ctx.args]
        if not rest:
            break
        name, found, rest = command.resolve_command(ctx, rest)
        assert found is not None and name is not None
        command = found
        ctx = command.make_context(name, rest, parent=ctx)
    return ctx


def section(name: str) -> str:
    text = README.read_text(encoding="utf-8")
    return text.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]


# The README itself

def test_readme_is_short_and_opens_with_the_two_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250
    first = command_lines(blocks(README, "sh")[0])
    assert first == ["./install.sh && .venv/bin/aispendtrack proxy",
                     "./install.sh --test && .venv/bin/python -m pytest"]
    # CI runs the README's test command, word for word.
    assert first[1] in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert "## First loop" in README.read_text() and "## Performance" in README.read_text()


def test_every_aispendtrack_line_in_the_docs_parses(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # The reader's own files, which click checks exist.
    for name in ("cert.pem", "key.pem", "corp-ca.pem", "prices.toml", "alerts.toml"):
        (tmp_path / name).write_text("")
    checked = []
    for path in DOCS:
        for block in blocks(path, "sh"):
            for line in command_lines(block):
                _, words = split(line)
                for n, word in enumerate(words):  # also `a && .venv/bin/aispendtrack ...`
                    if word.endswith("bin/aispendtrack"):
                        args = words[n + 1:words.index("&&", n) if "&&" in words[n:] else None]
                        try:
                            parse(args)
                        except click.ClickException as exc:
                            pytest.fail(f"{path.name}: {line!r}: {exc.format_message()}")
                        checked.append(line)
    assert len(checked) >= 50  # the extraction finds them


def test_pip_installs_in_the_docs_are_from_the_checkout():
    """AiSpendTrack is not on a registry: an install of it names the checkout, `-e '.[extra]'`."""
    for path in DOCS:
        for found in re.finditer(r"pip install[^`\n]*", path.read_text(encoding="utf-8")):
            if "aispendtrack" in found.group() or "[" in found.group():
                assert re.match(r"pip install -e '\.(\[[a-z,]+\])?'", found.group()), f"{path.name}: {found.group()}"


# The first loop and the main commands, run

@pytest.fixture
def smtp():
    messages: list[bytes] = []

    class Inbox:
        async def handle_DATA(self, server, session, envelope):
            messages.append(envelope.content)
            return "250 OK"

    controller = Controller(Inbox(), hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller.port, messages
    controller.stop()


class Session:
    """A shell as the README's reader has one: a data directory, a working directory, the venv."""

    def __init__(self, tmp_path: Path, upstream: str) -> None:
        self.cwd = tmp_path
        self.env = {**os.environ, "AISPENDTRACK_HOME": str(tmp_path / "home"), "OPENAI_API_KEY": "sk-test-key",
                    "PYTHONUNBUFFERED": "1"}  # the proxy's first-start key, read from its log
        self.upstream = upstream
        self.proxy_port = free_port()
        self.servers: list[subprocess.Popen] = []
        self.key = ""

    def argv(self, words: list[str]) -> list[str]:
        if words[0].startswith(".venv/bin/"):
            return [str(BIN / words[0].removeprefix(".venv/bin/")), *words[1:]]
        if words[0] == "python3":
            return [sys.executable, *words[1:]]
        return words

    def run(self, line: str) -> str:
        env, words = split(line)
        if words[-1] == "proxy":
            return self.start_proxy(words)
        if words[1:2] == ["web"]:
            return self.start_web(words)
        done = subprocess.run(self.argv(words), cwd=self.cwd, env={**self.env, **env}, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, f"{line!r} failed: {done.stdout}{done.stderr}"
        assert "Traceback" not in done.stderr
        return done.stdout

    def start_proxy(self, words: list[str]) -> str:
        log = self.cwd / "proxy.log"
        words = [*words, "--port", str(self.proxy_port), "--openai-upstream", self.upstream,
                 "--anthropic-upstream", self.upstream]
        self.servers.append(subprocess.Popen(self.argv(words), cwd=self.cwd, env=self.env, stdout=open(log, "w"),
                                             stderr=subprocess.STDOUT))
        self.wait(f"http://127.0.0.1:{self.proxy_port}/aispendtrack/health")
        self.key = re.search(r"ask_\S+", log.read_text()).group()  # printed once on the first start
        return log.read_text()

    def start_web(self, words: list[str]) -> str:
        port = free_port()
        words = [w for w in words if w not in ("--port", "8081")] + ["--port", str(port)]
        self.servers.append(subprocess.Popen(self.argv(words), cwd=self.cwd, env=self.env,
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        page = self.wait(f"http://127.0.0.1:{port}/")
        self.servers.pop().terminate()
        return page

    def wait(self, url: str) -> str:
        for _ in range(300):
            if any(server.poll() is not None for server in self.servers):
                pytest.fail(f"{url}: the server exited")
            try:
                answer = httpx.get(url, timeout=1, follow_redirects=True)  # the page: its sign-in first
                if answer.status_code == 200:
                    return answer.text
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        pytest.fail(f"{url} did not answer")

    def stop(self) -> None:
        for server in self.servers:
            server.terminate()
            server.wait(15)


def test_the_first_loop_and_the_main_commands_work_as_written(tmp_path, smtp):
    smtp_port, inbox = smtp
    with FakeProvider() as provider:
        shell = Session(tmp_path, provider.url)
        try:
            outputs = {}
            loop = command_lines(blocks(README, "sh")[1])
            assert len(loop) + len(blocks(README, "python")[0].splitlines()) <= 14  # "a ten-line first loop"
            assert split(loop[0])[1] == ["./install.sh"]  # done: the tests run from what it installed
            for line in loop[1:]:
                if "first_call.py" in line:
                    script = blocks(README, "python")[0].replace("8080", str(shell.proxy_port))
                    (tmp_path / "first_call.py").write_text(script.replace("ask_...", shell.key))
                outputs[line] = shell.run(line)
                deadline = time.monotonic() + 15  # a call shows once the proxy's writer has flushed (~1 s)
                while line.split("#")[0].strip().endswith("calls") and outputs[line].count("\n") < 2:
                    assert time.monotonic() < deadline, outputs[line]
                    time.sleep(0.5)
                    outputs[line] = shell.run(line)
            assert provider.last().path == "/v1/chat/completions"
            assert "x-aispendtrack-key" not in provider.last().headers
            calls = next(out for line, out in outputs.items() if line.split("#")[0].strip().endswith("calls"))
            header, row = calls.strip().splitlines()  # the one call, priced from the provider's usage
            assert "reported" in row and "$0.0" in row and " 200" in row, calls
            model = dict(zip(re.split(r"\s{2,}", header.strip()), re.split(r"\s{2,}", row.strip())))["MODEL"]
            report = next(out for line, out in outputs.items() if "report --by model" in line)
            assert re.search(rf"{re.escape(model)}\s+1\s", report), report
            assert "AiSpendTrack" in next(out for line, out in outputs.items() if line.split()[1] == "web")

            for line in command_lines(blocks(section("Main commands"), "sh")[0]):
                if " reconcile " in line:  # the provider's admin API is not on this machine
                    parse(split(line)[1][1:])
                    continue
                if "prices import prices.toml" in line:  # the reader's own file: docs/pricing.md's example
                    (tmp_path / "prices.toml").write_text(blocks(ROOT / "docs" / "pricing.md", "toml")[0])
                if "alerts test --channel ops-email" in line:
                    fill_in_ops_email(Path(shell.env["AISPENDTRACK_HOME"]) / "alerts.toml", smtp_port)
                shell.run(line)
            assert len(inbox) == 1 and b"test" in inbox[0]
            assert (tmp_path / "calls.csv").read_text().count("\n") == 2  # header and the loop's call
            assert (tmp_path / "backup.duckdb").stat().st_size > 0
            assert "acme" not in shell.run(".venv/bin/aispendtrack report --by customer")
        finally:
            shell.stop()


def fill_in_ops_email(path: Path, port: int) -> None:
    """What the reader does after `alerts init`: uncomment the ops-email block and fill it in."""
    text = path.read_text()
    block = re.search(r'# \[\[channel\]\]\n# name = "ops-email"\n(?:# .*\n)+', text).group()
    filled = (block.replace("# ", "", 1).replace("\n# ", "\n").replace("smtp.example.com", "127.0.0.1")
              .replace("port = 587", f"port = {port}").replace('"starttls"', '"none"'))
    filled = "\n".join(line for line in filled.splitlines() if not line.startswith(("username_env", "password_env")))
    path.write_text(text.replace(block, filled + "\n"))


# docs/deploy.md

@pytest.mark.skipif(not Path(HAPROXY).exists(), reason="Debian's haproxy is not installed")
def test_the_haproxy_configuration_in_deploy_md_is_valid(tmp_path):
    [config] = blocks(ROOT / "docs" / "deploy.md", "haproxy")
    (tmp_path / "haproxy.cfg").write_text(config)
    checked = subprocess.run([HAPROXY, "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "bind" in config and "/aispendtrack/health" in config


def test_the_postgresql_set_up_in_deploy_md_gives_a_working_catalog(tmp_path):
    """The role and database the docs create are enough for the shared mode to create its schema."""
    [sql] = blocks(ROOT / "docs" / "deploy.md", "sql")
    cluster = Cluster()
    try:
        with psycopg.connect(cluster.url("postgres"), autocommit=True) as con:
            for statement in filter(str.strip, sql.split(";")):
                con.execute(statement)
        catalog = f"postgresql://aispendtrack:secret@127.0.0.1:{cluster.port}/aispendtrack"
        env = {**os.environ, "AISPENDTRACK_CATALOG": catalog, "AISPENDTRACK_DATA_PATH": str(tmp_path / "lake")}
        created = subprocess.run([str(BIN / "aispendtrack"), "--home", str(tmp_path / "home"), "keys", "create",
                                  "--name", "replicas"], env=env, capture_output=True, text=True, timeout=120)
        assert created.returncode == 0, created.stdout + created.stderr
        with psycopg.connect(catalog) as con:
            owner = con.execute("SELECT schema_owner FROM information_schema.schemata "
                                "WHERE schema_name = 'aispendtrack'").fetchone()
        assert owner == ("aispendtrack",)
    finally:
        cluster.remove()


# contrib/: the systemd unit, the image and the compose file (docs/operations.md)

def served(argv: list[str], env: dict[str, str], url: str, cwd: Path) -> str:
    """Start a server command, return what ``url`` answers once it is up, stop it."""
    server = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            if server.poll() is not None:
                pytest.fail(f"{argv} exited: {server.stdout.read().decode() if server.stdout else ''}")
            try:
                return httpx.get(url, timeout=1).text
            except httpx.HTTPError:
                time.sleep(0.1)
        pytest.fail(f"{url} did not answer")
    finally:
        server.terminate()
        server.wait(15)


@pytest.mark.skipif(not Path("/usr/bin/systemd-analyze").exists(), reason="systemd-analyze is not installed")
def test_the_systemd_unit_verifies_and_its_command_serves(tmp_path):
    unit = (ROOT / "contrib" / "aispendtrack.service").read_text().replace("/opt/aispendtrack", str(ROOT))
    (tmp_path / "aispendtrack.service").write_text(unit)
    verified = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "aispendtrack.service")],
                              capture_output=True, text=True)
    assert verified.returncode == 0 and verified.stdout + verified.stderr == ""

    settings = dict(re.findall(r"^(\w+)=(.*)$", unit, re.M))
    env = dict(pair.split("=", 1) for pair in settings["Environment"].split())
    assert env["AISPENDTRACK_HOME"] == env["HOME"] == "/var/lib/" + settings["StateDirectory"]
    env = {**os.environ, "AISPENDTRACK_HOME": str(tmp_path / "state"), "HOME": str(tmp_path / "state")}
    port = free_port()
    argv = shlex.split(settings["ExecStart"].replace("--port 8080", f"--port {port}")
                       .replace("--web-port 8081", f"--web-port {free_port()}"))
    assert argv[0] == str(BIN / "aispendtrack") and argv[1] == "proxy"
    parse(argv[1:])
    assert served(argv, env, f"http://127.0.0.1:{port}/aispendtrack/health", Path(settings["WorkingDirectory"])) \
        == '{"status": "ok"}'
    assert (tmp_path / "state" / "aispendtrack.duckdb").exists()


def dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "contrib" / "Dockerfile").read_text()
    return [(m[1], m[2]) for m in re.finditer(r"^([A-Z]+) (.*)$", text, re.M)]


def test_the_dockerfile_installs_and_runs_what_the_readme_does():
    steps = dockerfile()
    runs = [arg for op, arg in steps if op == "RUN"]
    first = command_lines(blocks(README, "sh")[0])[0]
    assert first.split(" && ")[0] == "./install.sh"
    replica_install = command_lines(blocks(ROOT / "docs" / "deploy.md", "sh")[0])[0]
    assert runs[0] == " ".join(split(replica_install)[1]) == "./install.sh --with shared"
    [cmd] = [json_args for op, json_args in steps if op == "CMD"]
    argv = re.findall(r'"([^"]*)"', cmd)
    assert argv[:2] == split(first.split(" && ")[1])[1]  # .venv/bin/aispendtrack proxy
    parse(argv[1:])


def copy_as_docker_does(target: Path) -> None:
    """`COPY . .` with .dockerignore's patterns left out."""
    patterns = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]

    def ignored(directory: str, names: list[str]) -> set[str]:
        relative = Path(directory).relative_to(ROOT)
        return {name for name in names for pattern in patterns
                if fnmatch.fnmatch(str(relative / name), pattern.removeprefix("**/"))
                or (pattern.startswith("**/") and fnmatch.fnmatch(name, pattern[3:]))
                or ("/" not in pattern and fnmatch.fnmatch(name, pattern))}

    shutil.copytree(ROOT, target, ignore=ignored)


# pip's own notes about this machine's pip configuration (index directories that do not exist):
# not from AiSpendTrack, and not shown on a machine without that configuration.
MACHINE_PIP_NOTE = re.compile(r"WARNING: Location '[^']*' is ignored: it is neither a file nor a directory\.")


def test_the_dockerfile_steps_run_without_docker_and_print_nothing(tmp_path):
    """Docker cannot run here: the image's steps run in a copy of the build context instead (its
    user creation, a change to the machine, excepted). Also the README's install on a fresh copy:
    it prints nothing but errors, and the proxy it installs starts and answers its health URL."""
    workdir = tmp_path / "opt" / "aispendtrack"
    copy_as_docker_does(workdir)
    assert not (workdir / ".venv").exists() and not (workdir / ".git").exists()
    env = {**os.environ}
    for op, arg in dockerfile():
        if op == "ENV":
            env.update(pair.split("=", 1) for pair in arg.split())
        if op == "RUN" and not arg.startswith("useradd"):
            done = subprocess.run(["bash", "-c", arg], cwd=workdir, env=env, capture_output=True, text=True,
                                  timeout=900)
            noise = [line for line in (done.stdout + done.stderr).splitlines() if not MACHINE_PIP_NOTE.fullmatch(line)]
            assert done.returncode == 0 and noise == [], "\n".join(noise)
    home = tmp_path / "data"
    env.update(AISPENDTRACK_HOME=str(home), HOME=str(home))
    [cmd] = [arg for op, arg in dockerfile() if op == "CMD"]
    port = free_port()
    argv = [arg.replace("8080", str(port)).replace("8081", str(free_port())) for arg in re.findall(r'"([^"]*)"', cmd)]
    argv[0] = str(workdir / argv[0])
    health = f"http://127.0.0.1:{port}/aispendtrack/health"
    assert served(argv, env, health, workdir) == '{"status": "ok"}'
    assert (home / "aispendtrack.duckdb").exists() and (home / "ca" / "mitmproxy-ca.pem").is_file()


def test_the_compose_file_runs_the_image_in_the_shared_mode_behind_haproxy():
    compose = yaml.safe_load((ROOT / "contrib" / "compose.yaml").read_text())
    services = compose["services"]
    db = services["db"]["environment"]
    replicas = [s for s in services.values() if s.get("build", {}).get("dockerfile") == "contrib/Dockerfile"]
    assert len(replicas) == 2
    for replica in replicas:
        env = replica["environment"]
        assert env["AISPENDTRACK_CATALOG"] == (f"postgresql://{db['POSTGRES_USER']}:{db['POSTGRES_PASSWORD']}"
                                               f"@db:5432/{db['POSTGRES_DB']}")
        assert env["AISPENDTRACK_DATA_PATH"] == replica["volumes"][0].split(":")[1]  # one lake volume for all
    config = (ROOT / "contrib" / "haproxy.cfg").read_text()
    assert set(re.findall(r"server \w+ (\w+):8080 check", config)) == {n for n, s in services.items() if s in replicas}
    if Path(HAPROXY).exists():
        checked = subprocess.run([HAPROXY, "-c", "-f", str(ROOT / "contrib" / "haproxy.cfg")],
                                 capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr

"""Static checks of docker/ (there is no Docker engine here, so nothing is built or run): the compose
file and the Dockerfiles parse, name files that exist, run commands and flags the CLIs have, set
only settings labelloop reads, keep secrets in .env, and wire services, volumes, health checks and
ports consistently. The image's ``pip install .`` is the wheel tests/test_packaging.py builds and
imports in a clean venv; here we check the image copies exactly the folders that wheel is built from.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import re
import shlex
import threading
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from typer.main import get_command

from labelloop.cli import app
from labelloop.settings import ENV_NAMES, Settings, load_settings
from tests.test_packaging import FOLDERS

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
OURS = "docker/labelloop.Dockerfile"  # the image of backend, worker and sync
INTERP = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
SECRET = re.compile(r"(PASSWORD|_PASS|TOKEN|SECRET)$")


def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yml").read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def env_example() -> dict[str, str]:
    """docker/.env.example as KEY -> value, commented-out ``# KEY=value`` lines included."""
    out = {}
    for line in (DOCKER / ".env.example").read_text().splitlines():
        m = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
        if m:
            value = m.group(2)
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            out[m.group(1)] = value
    return out


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} against ``env`` (a missing required one fails)."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op and op.endswith("?"):
            raise AssertionError(f"${{{name}}} is required ({arg}) and .env.example gives no value")
        return arg if op and op.endswith("-") else ""

    return INTERP.sub(one, value)


def ours() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services().items() if s.get("build", {}).get("dockerfile") == OURS}


def cli_command(path: list[str]) -> Any:
    """A labelloop (sub)command as typer builds it (typer vendors click: duck-typed, not isinstance)."""
    cmd = get_command(app)
    for name in path:
        assert name in getattr(cmd, "commands", {}), f"labelloop has no {name!r} command"
        cmd = cmd.commands[name]  # type: ignore[attr-defined]
    return cmd


def check_args(cmd: Any, args: list[str], who: str) -> None:
    """Every --option in ``args`` is one ``cmd`` declares (labelloop's via typer, mlflow's click)."""
    opts = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    for a in args:
        if a.startswith("-"):
            assert a.split("=")[0] in opts, f"{who}: {cmd.name} has no option {a} (has {sorted(opts)})"


def split_command(args: list[str]) -> tuple[list[str], list[str]]:
    """labelloop's args -> (subcommand path, the rest)."""
    path, rest = [], list(args)
    group = get_command(app)
    while rest and rest[0] in getattr(group, "commands", {}):
        group = group.commands[rest[0]]  # type: ignore[attr-defined]
        path.append(rest.pop(0))
    return path, rest


def dockerfiles() -> list[Path]:
    return sorted(DOCKER.glob("*.Dockerfile"))


def load_healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("labelloop_healthcheck", DOCKER / "healthcheck.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------- the compose file


def test_compose_has_every_service_of_the_loop() -> None:
    s = services()
    assert {
        "label-studio",
        "postgres",
        "redis",
        "backend",
        "worker",
        "sync",
        "mlflow",
        "rq-dashboard",
    } <= set(s)
    assert set(ours()) == {"backend", "worker", "worker-gpu", "sync"}
    assert re.fullmatch(r"heartexlabs/label-studio:1\.23\.\d+", s["label-studio"]["image"])
    for name, svc in s.items():  # every image pinned to a version
        assert "image" in svc, name
        assert ":" in svc["image"] and not svc["image"].endswith(":latest"), f"{name}: unpinned image"


def test_every_service_has_a_healthcheck_and_a_restart_policy() -> None:
    for name, svc in services().items():
        hc = svc.get("healthcheck")
        assert hc and hc.get("test"), f"{name}: no healthcheck"
        assert hc["test"][0] in ("CMD", "CMD-SHELL"), name
        assert svc.get("restart") in ("unless-stopped", "always", "on-failure"), f"{name}: no restart"


def test_labelloop_services_run_commands_and_flags_the_cli_has() -> None:
    seen = {}
    for name, svc in ours().items():
        path, rest = split_command(svc["command"])
        assert path, f"{name}: {svc['command']} is not a labelloop command"
        check_args(cli_command(path), rest, name)
        seen[name] = (path, rest)
    assert seen["backend"] == (["serve"], ["--no-rq-worker"])  # the worker service runs the jobs
    assert seen["worker"] == (["worker"], ["--queues", "train,predict"])
    assert seen["worker-gpu"] == (["worker"], ["--queues", "train"])
    assert seen["sync"][0] == ["sync"]
    # the Dockerfile's own ENTRYPOINT + CMD, and the commands the README tells people to run
    text = (ROOT / OURS).read_text()
    assert json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1)) == ["labelloop"]  # type: ignore[union-attr]
    cmd = json.loads(re.search(r"^CMD (.+)$", text, re.M).group(1))  # type: ignore[union-attr]
    path, rest = split_command(cmd)
    check_args(cli_command(path), rest, "Dockerfile CMD")
    readme = (ROOT / "README.md").read_text()
    for line in re.findall(r"labelloop/labelloop:[^\s]+ ((?:worker|sync|serve)[^\n`\\]*)", readme):
        path, rest = split_command(shlex.split(line))
        check_args(cli_command(path), rest, f"README: {line}")


def test_the_worker_queues_are_the_jobs_queues() -> None:
    from labelloop.backend.jobs.queues import PREDICT, TRAIN

    s = services()
    kinds = s["worker"]["command"][s["worker"]["command"].index("--queues") + 1].split(",")
    assert set(kinds) == {TRAIN, PREDICT}
    gpu = s["worker-gpu"]
    assert gpu["command"][-1] == TRAIN and gpu["profiles"] == ["gpu"]  # started only when asked
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["environment"]["LABELLOOP_TRAIN_DEVICE"] not in ("cpu", "auto")
    assert "cu" in gpu["build"]["args"]["TORCH_INDEX"]
    assert "TORCH_INDEX" in (ROOT / OURS).read_text()


def test_the_mlflow_server_command_is_one_mlflow_has() -> None:
    from mlflow.cli import cli as mlflow_cli

    svc = services()["mlflow"]
    assert svc["command"][0] == "server"
    server = mlflow_cli.commands["server"]
    check_args(server, svc["command"][1:], "mlflow")
    assert "--serve-artifacts" in svc["command"]  # clients upload and download through the server
    envvars = {p.envvar for p in server.params if p.envvar}
    for key in svc["environment"]:
        assert key in envvars, f"mlflow server does not read {key}"
    assert svc["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://")
    dest = svc["command"][svc["command"].index("--artifacts-destination") + 1]
    assert any(v.endswith(":" + dest) for v in svc["volumes"]), "the artifacts are not on a volume"
    hosts = svc["command"][svc["command"].index("--allowed-hosts") + 1].split(",")
    for name, s in ours().items():  # MLflow 3.5+ refuses Host headers it does not allow
        uri = s["environment"]["LABELLOOP_MLFLOW_TRACKING_URI"]
        assert uri.removeprefix("http://") in hosts, f"{name}: {uri} is not an allowed host of mlflow"


def test_every_labelloop_variable_is_a_setting_and_the_values_validate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    example = env_example()
    for where, keys in [("docker/.env.example", set(example))] + [
        (f"compose service {n}", set(s.get("environment", {}))) for n, s in services().items()
    ]:
        unknown = {k for k in keys if k.startswith(("LABELLOOP_", "CVAT_"))} - ENV_NAMES
        assert not unknown, f"{where}: labelloop.settings reads no {sorted(unknown)}"
    dummy = {k: v or "x" * 40 for k, v in example.items()}
    for name, svc in ours().items():  # the values, as compose passes them, load as settings
        for k in list(ENV_NAMES):
            monkeypatch.delenv(k, raising=False)
        for key, value in svc["environment"].items():
            monkeypatch.setenv(key, interpolate(str(value), dummy))
        monkeypatch.chdir(DOCKER)  # no labelloop.toml there: only the environment counts
        settings = load_settings()
        assert settings.store.url and settings.store.url.startswith("postgresql+psycopg://"), name
        assert settings.registry.mlflow_tracking_uri == "http://mlflow:5000", name
        assert settings.queue.redis_url.startswith("redis://redis:"), name
        host = settings.labelstudio.url.split("//")[1].split(":")[0]  # type: ignore[union-attr]
        assert host in services(), name
        if name == "sync":
            assert settings.sync.sources, "the example's LABELLOOP_SYNC_SOURCES gives no source"
    assert Settings(sync={"sources": json.loads(example["LABELLOOP_SYNC_SOURCES"])}).sync.sources


def test_secrets_come_from_env_never_from_the_files() -> None:
    text = (DOCKER / "compose.yml").read_text()
    example = env_example()
    used = {m.group(1) for m in INTERP.finditer(text)}
    required = {m.group(1) for m in INTERP.finditer(text) if m.group(2) == ":?"}
    assert required <= set(example), f"required but not in .env.example: {required - set(example)}"
    assert set(example) <= used, f".env.example sets what compose never reads: {set(example) - used}"
    for key, value in example.items():
        if SECRET.search(key):
            assert value == "", f".env.example ships a value for the secret {key}"
    for name, svc in services().items():
        for key, value in (svc.get("environment") or {}).items():
            value = str(value)
            if SECRET.search(key) and value not in ("", "true", "false"):
                assert INTERP.fullmatch(value), f"{name}: {key} is hard-coded, not from .env"
            for password in re.findall(r"://[^:/@]+:([^@]+)@", value):  # credentials inside URLs
                assert INTERP.fullmatch(password), f"{name}: {key} has a hard-coded password"
    assert ".env" in (DOCKER / ".gitignore").read_text().split()
    assert "docker/.env" in (ROOT / ".dockerignore").read_text().split()


def test_volumes_are_declared_and_bind_mounts_exist() -> None:
    c = compose()
    named = set(c["volumes"])
    used = set()
    for name, svc in c["services"].items():
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("./"):  # a file of docker/ (init scripts)
                assert (DOCKER / src).exists(), f"{name}: bind mount {src} is not in docker/"
            elif src.startswith("../"):  # the user's folders (models, images): never baked in
                assert src.removeprefix("../") in (ROOT / ".dockerignore").read_text().split(), src
            else:
                assert src in named, f"{name}: volume {src} is not declared"
                used.add(src)
    assert used == named, f"declared but unused volumes: {named - used}"
    # the store's blobs are shared by the writer (sync) and the reader (worker's export)
    blob_mount = {n: [v for v in s["volumes"] if v.endswith(":/blobs")] for n, s in ours().items()}
    assert all(blob_mount.values()) and len({m[0] for m in blob_mount.values()}) == 1
    assert all(s["environment"]["LABELLOOP_BLOB_ROOT"] == "/blobs" for s in ours().values())


def test_dependencies_wait_for_health() -> None:
    s = services()
    for name, svc in s.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on as a list does not wait for health"
        for dep, how in deps.items():
            assert dep in s, f"{name} depends on missing service {dep}"
            if "healthcheck" in s[dep]:
                assert how.get("condition") == "service_healthy", f"{name} -> {dep}"
    for name in ("backend", "worker", "sync"):
        assert {"redis", "postgres", "mlflow"} <= set(s[name]["depends_on"]), name
    assert "label-studio" in s["sync"]["depends_on"]


def test_published_ports_do_not_clash_and_internal_ones_stay_inside() -> None:
    seen: dict[tuple[str, str], str] = {}
    for name, svc in services().items():
        for p in svc.get("ports", []):
            parts = str(p).split(":")
            ip, host = (parts[0], parts[1]) if len(parts) == 3 else ("0.0.0.0", parts[0])
            for other_ip in {"0.0.0.0", ip} if ip != "0.0.0.0" else {"0.0.0.0", "127.0.0.1"}:
                assert (other_ip, host) not in seen, f"{name} and {seen[(other_ip, host)]} publish {host}"
            seen[(ip, host)] = name
    s = services()
    assert not s["postgres"].get("ports") and not s["redis"].get("ports")  # no auth: never published
    assert not s["worker"].get("ports")  # so `--scale worker=N` works
    assert s["mlflow"]["ports"][0].startswith("127.0.0.1:") and s["rq-dashboard"]["ports"][0].startswith(
        "127.0.0.1:"
    )


def test_label_studio_can_reach_the_backend_and_creates_the_token_labelloop_uses() -> None:
    ls = services()["label-studio"]["environment"]
    assert ls["ML_BLOCK_LOCAL_IP"] == "false"  # the backend is on the compose network's private range
    assert ls["LABEL_STUDIO_USER_TOKEN"] == "${LABEL_STUDIO_TOKEN:?set LABEL_STUDIO_TOKEN in docker/.env}"
    assert ls["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    for svc in ours().values():
        assert INTERP.fullmatch(svc["environment"]["LABELLOOP_LABEL_STUDIO_TOKEN"]).group(1) == (  # type: ignore[union-attr]
            "LABEL_STUDIO_TOKEN"
        )
    init = (DOCKER / "postgres" / "init-databases.sh").read_text()
    for db in ("labelstudio", "mlflow"):  # the databases the services name exist
        assert db in init
    assert ls["POSTGRE_NAME"] == "labelstudio"
    assert services()["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"].endswith("/mlflow")


# --------------------------------------------------------------------------- the Dockerfiles


def test_dockerfiles_copy_what_exists_and_compose_builds_them() -> None:
    built = {s["build"]["dockerfile"] for s in services().values() if "build" in s}
    for svc in services().values():
        if "build" in svc:
            assert (DOCKER / svc["build"]["context"]).resolve() == ROOT
    assert built == {str(p.relative_to(ROOT)) for p in dockerfiles()}
    for path in dockerfiles():
        text = path.read_text()
        assert re.search(r"^FROM \S+:\S+", text, re.M), f"{path.name}: unpinned base image"
        for src in re.findall(r"^COPY (.+) \S+$", text, flags=re.M):
            for part in src.split():
                if not part.startswith("--"):
                    assert (ROOT / part).exists(), f"{path.name}: COPY {part}: not in the repository"
        assert re.search(r"^USER (?!root)\S+", text, re.M), f"{path.name}: runs as root"
        assert "constraints.txt" in text, f"{path.name}: not pinned by docker/constraints.txt"


def test_the_image_installs_the_wheel_test_packaging_checks() -> None:
    text = (ROOT / OURS).read_text()
    copied = {
        src.split("/")[0] for line in re.findall(r"^COPY (.+) \S+$", text, re.M) for src in line.split()
    }
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dirs = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    assert package_dirs == set(FOLDERS) <= copied, "the image copies other folders than the wheel holds"
    assert re.search(r"pip install -c constraints\.txt \. ", text)  # a real (non-editable) install
    assert "-e ." not in text
    torch_pin = re.search(r'"torch==([\d.]+)"', text)
    assert torch_pin and torch_pin.group(1) == "2.14.1"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_constraints_satisfy_what_labelloop_requires() -> None:
    from packaging.requirements import Requirement

    pins = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            assert not req.extras, f"pip refuses extras in a constraints file: {line}"
            (spec,) = req.specifier
            pins[req.name] = spec.version
    wanted = {
        Requirement(r).name: Requirement(r)
        for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    assert {"mlflow", "rq"} <= set(pins)
    for name, version in pins.items():
        if name in wanted:
            assert wanted[name].specifier.contains(version), f"{name}=={version} vs {wanted[name]}"
    assert "mlflow" in services()["mlflow"]["image"] and pins["mlflow"] in services()["mlflow"]["image"]


def test_the_backend_healthcheck_is_a_route_the_app_has() -> None:
    from labelloop.backend.serving.app import create_app

    app_ = create_app(Settings(), ROOT / "unused.pt")  # the app loads no model until a prediction
    assert "/health" in {r.rule for r in app_.url_map.iter_rules()}
    assert "127.0.0.1:9090/health" in " ".join(services()["backend"]["healthcheck"]["test"])
    assert "/health" in (ROOT / OURS).read_text()
    for svc in services().values():  # checks through healthcheck.py name one of its checks
        test = svc["healthcheck"]["test"]
        if "/usr/local/bin/labelloop-healthcheck" in test:
            assert test[test.index("/usr/local/bin/labelloop-healthcheck") + 1] in load_healthcheck().CHECKS


# --------------------------------------------------------------------------- healthcheck.py


def test_healthcheck_http_passes_on_200_and_fails_otherwise() -> None:
    hc = load_healthcheck()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path == "/ok" and (
                self.headers.get("Authorization") in (None, "Basic dTpw")  # u:p
            )
            self.send_response(200 if ok else 503)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        assert hc.main(["http", f"{base}/ok"]) == 0
        assert hc.main(["http", f"{base}/down"]) == 1
        assert hc.main(["nonsense"]) == 2
    finally:
        server.shutdown()


def test_healthcheck_worker_sees_only_this_hosts_worker(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from redis import Redis
    from rq import Queue, Worker

    hc = load_healthcheck()
    host = f"healthcheck-test-{id(hc)}"
    monkeypatch.setattr(hc.socket, "gethostname", lambda: host)
    monkeypatch.setenv("LABELLOOP_REDIS_URL", redis_url)
    assert hc.main(["worker"]) == 1
    conn = Redis.from_url(redis_url)
    w = Worker([Queue("labelloop-healthcheck-test", connection=conn)], connection=conn, name=host)
    w.hostname = host
    w.register_birth()
    try:
        assert hc.main(["worker"]) == 0
    finally:
        w.register_death()
    assert hc.main(["worker"]) == 1


def test_healthcheck_sync_needs_a_recent_pass_of_this_hosts_sync(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real sync loop (one pass over an unreachable source) writes the heartbeat the check reads."""
    from labelloop.procs import free_port
    from labelloop.settings import SyncSource, load_settings
    from labelloop.sync.events import heartbeat_key
    from labelloop.sync.service import SyncService
    from labelloop.sync.store import Store

    hc = load_healthcheck()
    host = f"healthcheck-sync-{id(hc)}"
    monkeypatch.setattr(hc.socket, "gethostname", lambda: host)
    import labelloop.sync.service as service

    monkeypatch.setattr(service.socket, "gethostname", lambda: host)
    for k, v in {
        "LABELLOOP_REDIS_URL": redis_url,
        "LABELLOOP_QUEUE_PREFIX": f"hc{id(hc)}",
        "LABELLOOP_STORE_URL": f"sqlite:///{tmp_path / 'store.db'}",
    }.items():
        monkeypatch.setenv(k, v)
    settings = load_settings()
    with Store.open(settings=settings) as store:
        assert hc.main(["sync"]) == 1  # the store answers, but no pass yet
        dead = SyncSource(platform="labelstudio", url=f"http://127.0.0.1:{free_port()}", project=1)
        SyncService(settings, store, [dead], enqueue=False).run(max_passes=1)
    assert hc.main(["sync"]) == 0
    from redis import Redis

    Redis.from_url(redis_url).delete(heartbeat_key(settings, host))
    assert hc.main(["sync"]) == 1


# --------------------------------------------------------------------------- README


def test_readme_says_how_to_run_it_and_that_it_is_checked_statically() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "## Run it with Docker" in readme and "## Scaling out" in readme
    assert "docker compose -f docker/compose.yml up -d" in readme
    assert "--scale worker=" in readme
    assert "statically" in readme
    for name in services():
        assert f"`{name}`" in readme, f"the README does not say what {name} is"

"""Static checks of docker/ (no Docker engine here): the compose file and Dockerfile refer to
things that exist, run commands the CLI has, and set only settings labelloop knows."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from typer.main import get_command

from labelloop.cli import app
from labelloop.settings import ENV_NAMES, Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yml").read_text())


def test_compose_services_build_run_and_configure_what_exists() -> None:
    c = compose()
    commands = set(get_command(app).commands)  # type: ignore[attr-defined]
    fields = ENV_NAMES
    ours = {name: s for name, s in c["services"].items() if "build" in s}
    assert set(ours) == {"backend", "worker"}
    for name, svc in ours.items():
        build = svc["build"]
        assert (DOCKER / build["context"] / build["dockerfile"]).is_file(), name
        assert svc["command"][0] in commands, f"{name}: labelloop has no {svc['command'][0]!r} command"
        unknown = {k for k in svc["environment"] if k.startswith("LABELLOOP_")} - fields
        assert not unknown, f"{name}: settings labelloop does not have: {unknown}"
        for dep in svc.get("depends_on", {}):
            assert dep in c["services"], f"{name} depends on missing service {dep}"
        url = svc["environment"]["LABELLOOP_LABEL_STUDIO_URL"]
        assert url.split("//")[1].split(":")[0] in c["services"]
    assert "--no-rq-worker" in c["services"]["backend"]["command"]  # the worker service runs it
    named = set(c["volumes"])
    for svc in c["services"].values():
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            assert src.startswith(".") or src in named, f"volume {src} is not declared"


def test_dockerfile_copies_what_exists_and_checks_a_real_endpoint() -> None:
    text = (DOCKER / "backend.Dockerfile").read_text()
    for src in re.findall(r"^COPY (.+) \S+$", text, flags=re.M):
        for part in src.split():
            assert (ROOT / part).exists(), f"COPY {part}: not in the repository"
    assert "/health" in text
    from labelloop.backend.serving.app import create_app

    app_ = create_app(Settings(), ROOT / "unused.pt")  # the app loads no model until a prediction
    assert "/health" in {r.rule for r in app_.url_map.iter_rules()}
    torch_pin = re.search(r'"torch==([\d.]+)"', text)
    assert torch_pin and torch_pin.group(1) == "2.14.1"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored

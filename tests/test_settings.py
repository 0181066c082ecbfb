"""Settings: one reader of LABELLOOP_* / CVAT_* and labelloop.toml, grouped in sections."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from labelloop.errors import ConfigError, ErrorKind
from labelloop.settings import ENV_NAMES, SECTIONS, load_settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_sections_read_flat_variables_and_toml_tables(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (clean_env / "labelloop.toml").write_text(
        "[predict]\nconf = 0.3\nimgsz = 320\n[store]\nurl = 'sqlite:///x.db'\n"
        "[[sync.sources]]\nplatform = 'labelstudio'\nurl = 'http://ls:8080'\nproject = 3\n"
        "[[sync.sources]]\nplatform = 'cvat'\ntask = 12\n"
    )
    monkeypatch.setenv("LABELLOOP_CONF", "0.4")  # the environment wins over the file
    monkeypatch.setenv("CVAT_URL", "http://cvat:8080/")
    monkeypatch.setenv("LABELLOOP_LOCAL_ROOTS", "/data/a,/data/b")
    monkeypatch.setenv("LABELLOOP_LABEL_MAP", '{"person": "Person"}')
    s = load_settings(model="best.pt")  # an override (a CLI option) wins over both
    assert s.predict.conf == 0.4 and s.predict.imgsz == 320 and s.predict.model == Path("best.pt")
    assert s.store.url == "sqlite:///x.db" and s.cvat.url == "http://cvat:8080"
    assert s.fetch.local_roots == [Path("/data/a"), Path("/data/b")]
    assert s.predict.label_map == {"person": "Person"}
    assert [(x.platform, x.project, x.task) for x in s.sync.sources] == [
        ("labelstudio", 3, None),
        ("cvat", None, 12),
    ]


def test_a_bad_value_names_the_variable_and_the_toml_key(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LABELLOOP_TRAIN_EPOCHS", "zero")
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert "LABELLOOP_TRAIN_EPOCHS" in str(e.value) and "[train] epochs" in str(e.value)
    assert e.value.kind is ErrorKind.CONFIG
    monkeypatch.delenv("LABELLOOP_TRAIN_EPOCHS")
    (clean_env / "labelloop.toml").write_text("[predict]\nconff = 0.3\n")
    with pytest.raises(ConfigError, match=r"predict\.conff .*known: .*conf"):
        load_settings()
    (clean_env / "labelloop.toml").write_text("[[sync.sources]]\nplatform = 'labelstudio'\n")
    with pytest.raises(ConfigError, match="exactly one of project"):
        load_settings()


def test_a_child_process_sees_what_the_parent_resolved(clean_env: Path) -> None:
    s = load_settings(conf=0.35, label_map={"a": "A"}, redis_url="redis://h:1/2", cvat_url="http://c")
    code = "from labelloop.settings import load_settings as l; s = l(); print(s.predict.conf, s.predict.label_map, s.queue.redis_url, s.cvat.url)"
    out = subprocess.run(
        [sys.executable, "-c", code], env=s.environment(), capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["0.35", "{'a':", "'A'}", "redis://h:1/2", "http://c"]
    assert s.with_(predict={"conf": 0.5}).predict.conf == 0.5 and s.predict.conf == 0.35


def test_only_settings_reads_labelloop_and_cvat_variables() -> None:
    """No module but settings.py reads os.environ / os.getenv for LABELLOOP_* or CVAT_* names."""
    offenders = []
    for folder in ("labelloop", "backend", "connectors", "sync"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "settings.py" and path.parent.name == "labelloop":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and node.value.startswith(("LABELLOOP_", "CVAT_"))
                    and _reads_env(path, node)
                ):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value}")
    assert not offenders, offenders


def _reads_env(path: Path, node: ast.Constant) -> bool:
    line = path.read_text().splitlines()[node.lineno - 1]
    return "environ" in line or "getenv" in line


def test_every_section_has_its_own_variables() -> None:
    assert {
        "predict",
        "fetch",
        "serve",
        "labelstudio",
        "cvat",
        "queue",
        "store",
        "train",
        "gate",
        "select",
    } <= set(SECTIONS)
    names = [cls.env_name(f) for cls in SECTIONS.values() for f in cls.model_fields]
    assert len(names) == len(set(names)), "two settings share one variable"

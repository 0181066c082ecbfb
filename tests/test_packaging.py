"""What a user installs: the wheel of ``pip install .`` must hold every package of the tree (a
non-editable install and the docker image see nothing else), and each checkout runs its own code."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {
    "labelloop": "labelloop",
    "backend": "labelloop.backend",
    "connectors": "labelloop.connectors",
    "sync": "labelloop.sync",
}


_IGNORE = shutil.ignore_patterns(
    ".venv", ".venv-ls", ".git", "__pycache__", "*.egg-info", "build", "dist", "bench-results"
)


def _modules() -> list[str]:
    out = []
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if "__main__" in parts or "migrations" in parts:
                continue
            out.append(".".join([package, *parts]))
    return out


def _deps_site() -> str:
    """The site-packages that holds the dependencies (the cached venv the checkout's .venv points at)."""
    spec = importlib.util.find_spec("numpy")
    assert spec and spec.origin
    return str(Path(spec.origin).parents[1])


def _bare_venv(where: Path) -> Path:
    """A venv that sees the dependencies but has no install of labelloop, editable or not."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    py = where / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "_deps.pth").write_text(f"import site; site.addsitedir({_deps_site()!r})\n")
    return py


def test_the_wheel_holds_every_module_and_they_import_without_the_checkout(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    src = tmp_path / "src"  # a clean copy: a build/ left in the checkout would hide a missing package
    shutil.copytree(ROOT, src, ignore=_IGNORE)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(src),
        ],
        check=True,
        timeout=300,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("labelloop-*.whl")
    py = _bare_venv(tmp_path / "venv")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, timeout=300)
    modules = _modules()
    assert len(modules) > 40
    code = (
        "import importlib, sys\n"
        "bad = []\n"
        f"for m in {modules!r}:\n"
        "    try:\n"
        "        mod = importlib.import_module(m)\n"
        f"        assert {str(ROOT)!r} not in (mod.__file__ or ''), m + ' came from the checkout'\n"
        "    except Exception as e:\n"
        "        bad.append(f'{m}: {type(e).__name__}: {e}')\n"
        "print('\\n'.join(bad)); sys.exit(1 if bad else 0)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [str(py), "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, f"modules missing from the wheel or broken there:\n{out.stdout}{out.stderr}"


def test_two_clones_each_run_their_own_code(tmp_path: Path) -> None:
    """bootstrap.sh caches only the dependencies; each checkout's .venv runs that checkout."""
    clones = []
    for name in ("a", "b"):
        dest = tmp_path / name
        shutil.copytree(ROOT, dest, ignore=_IGNORE)
        (dest / "labelloop" / "clone_marker.py").write_text(f"NAME = {name!r}\n")
        clones.append(dest)
    env = {
        **os.environ,
        "LABELLOOP_CACHE": os.environ.get("LABELLOOP_CACHE", str(Path.home() / ".cache" / "labelloop")),
    }
    for dest in clones:  # a bootstraps, then b: b's install must not repoint a
        subprocess.run(
            ["bash", "scripts/bootstrap.sh", "main"],
            cwd=dest,
            env=env,
            check=True,
            timeout=900,
            capture_output=True,
        )
    for dest in clones:
        out = subprocess.run(
            [
                str(dest / ".venv" / "bin" / "python"),
                "-c",
                "import labelloop.clone_marker as m, labelloop.cli as c; print(m.NAME, c.__file__)",
            ],
            cwd="/",
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert out[0] == dest.name and out[1].startswith(str(dest)), out
        script = (dest / ".venv" / "bin" / "labelloop").read_text().splitlines()[0]
        assert script.startswith(f"#!{dest}/.venv/bin/python"), script
    assert sysconfig.get_path("purelib")  # the test venv itself is untouched

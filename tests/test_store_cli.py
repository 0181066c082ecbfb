"""``labelloop dataset ...`` on the real store (both databases), through Typer's CliRunner, and once
as a subprocess for the one-line error."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

import labelloop.cli.dataset  # noqa: F401  (registers the sub-app)
from labelloop.cli.common import app
from labelloop.sync.ingest import ingest
from labelloop.sync.store import Store
from tests.store_fixtures import *  # noqa: F403
from tests.store_fixtures import LS, ann, box, item, result

runner = CliRunner()


def png(shade: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (shade, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def fill(store: Store, n: int, start: int = 0) -> None:
    anns = []
    for i in range(start, start + n):
        sha = store.blobs.put(png(i))
        regions = [box("cat", 2, 2, 20, 20), box("dog", 30, 10, 60, 40)]
        anns.append(ann(i, i, item=item(regions, sha=sha, uri=f"u{i}.png", w=64, h=48), annotator="a"))
    ingest(store, LS, result(anns, present={}))


def cli(store: Store, *args: str) -> tuple[int, str]:
    url = store.engine.url.render_as_string(hide_password=False)
    res = runner.invoke(app, ["dataset", "--store", url, "--blobs", store.blobs.root, *args])
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout


def test_dataset_commands(store: Store, tmp_path: Path) -> None:
    code, out = cli(store, "log", "--json")
    assert code == 0 and json.loads(out) == []
    fill(store, 10)
    code, out = cli(store, "snapshot", "-m", "first", "--val-fraction", "0.4", "--json")
    v1 = json.loads(out)
    assert code == 0 and v1["created"] and v1["counts"]["items"] == 10
    code, out = cli(store, "snapshot", "-m", "again", "--json")
    assert json.loads(out)["created"] is False and json.loads(out)["id"] == v1["id"]
    fill(store, 4, start=10)
    code, out = cli(store, "snapshot", "-m", "second")
    assert code == 0 and "version" in out
    code, out = cli(store, "log", "--json")
    log = json.loads(out)
    assert [v["message"] for v in log] == ["second", "first"] and log[0]["parent_id"] == v1["id"]
    code, out = cli(store, "show", v1["id"][:7], "--json", "--items")
    shown = json.loads(out)
    assert shown["id"] == v1["id"] and len(shown["items"]) == 10
    code, out = cli(store, "diff", v1["id"][:7], "head", "--json")
    assert len(json.loads(out)["added"]) == 4
    code, out = cli(store, "check", "head", "--json")
    assert code == 0 and json.loads(out)["ok"] is True
    code, out = cli(store, "stats", "head", "--json")
    st = json.loads(out)
    assert st["counts"]["classes"]["train"]["cat"] >= 1 and st["agreement"]["tasks"] == 0
    code, out = cli(store, "export", "head", "--format", "yolo", "-o", str(tmp_path / "y"), "--json")
    assert code == 0 and json.loads(out)["task"] == "detect" and (tmp_path / "y" / "data.yaml").is_file()
    code, out = cli(store, "export", "head", "-f", "coco", "-o", str(tmp_path / "c"))
    assert code == 0 and (tmp_path / "c" / "annotations" / "instances_train.json").is_file()
    # human output works too
    for args in (["log"], ["show", "head"], ["diff", "head~1", "head"], ["check", "head"], ["stats", "head"]):
        code, out = cli(store, *args)
        assert code == 0 and out.strip(), args


def test_check_fails_with_exit_1(store: Store) -> None:
    ingest(store, LS, result([ann(1, 1, [box("cat", 90, 90, 150, 150)])]))
    cli(store, "snapshot", "-m", "bad")
    code, out = cli(store, "check", "head", "--no-images", "--json")
    assert code == 1 and json.loads(out)["errors"] == 1


def test_errors_are_one_line(store: Store) -> None:
    url = store.engine.url.render_as_string(hide_password=False)
    prog = "import labelloop.cli.dataset; from labelloop.cli import main; main()"
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            prog,
            "dataset",
            "--store",
            url,
            "--blobs",
            store.blobs.root,
            "show",
            "abcdef",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "error: no version 'abcdef'; `labelloop dataset log` lists them"
    ]

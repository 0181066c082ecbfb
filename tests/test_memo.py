"""The result memo with real parts: real Redis, the demo model's ONNX served by the lean runtime, a
real gunicorn backend with 2 workers (and a second backend sharing the Redis prefix), and in-process
prediction services for what changes the key and for Redis being down.

The forward counter is ``labelloop_forwards_total`` on /metrics (all workers summed) or the
``BatchReport.memo`` figures in process.
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

import pytest
import requests
from redis import Redis

from labelloop.backend.serving.predict_service import PredictionService
from labelloop.procs import free_port
from labelloop.settings import Settings, load_settings
from tests.helpers import SHAPES_CONFIG, BackendProcess, shape_images

IMGSZ = 320
DISTINCT = 6


@pytest.fixture(scope="module")
def onnx_model(demo_weights: Path, cache_dir: Path) -> Path:
    from labelloop.backend.inference.runtime import onnx_export

    return onnx_export(demo_weights, IMGSZ, cache_dir)


@pytest.fixture
def pool(tmp_path: Path) -> tuple[Path, list[dict]]:
    """``DISTINCT`` images, each in two tasks (a pool with duplicates): 12 tasks."""
    paths = shape_images(tmp_path / "img", DISTINCT, size=IMGSZ)
    tasks = [{"id": i, "data": {"image": str(p)}} for i, p in enumerate(paths + paths)]
    return tmp_path / "img", tasks


def _counter(url: str, name: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=10).text
    m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _predict(url: str, tasks: list[dict]) -> list[dict]:
    r = requests.post(f"{url}/predict", json={"tasks": tasks, "label_config": SHAPES_CONFIG}, timeout=120)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == len(tasks)
    return results


def _regions(results: list[dict]) -> list[list[tuple]]:
    def key(x: dict) -> tuple:
        return x["value"]["rectanglelabels"][0], round(x["value"]["x"], 3), round(x["score"], 5)

    return [sorted(key(x) for x in r["result"]) for r in results]


def test_a_second_pass_makes_no_forward_on_any_worker_or_backend(
    onnx_model: Path, pool: tuple[Path, list[dict]], tmp_path: Path, redis_url: str
) -> None:
    roots, tasks = pool
    prefix = f"ll-memo-{uuid.uuid4().hex[:8]}"
    settings = load_settings(local_roots=[roots], image_cache_bytes=0, http_workers=2)
    env = {"LABELLOOP_QUEUE_PREFIX": prefix}  # both backends share the memo
    started: list[BackendProcess] = []
    try:
        a = BackendProcess(tmp_path / "a", onnx_model, redis_url, env, settings=settings)
        started.append(a.start(timeout=120))
        first = _predict(a.url, tasks)
        assert _counter(a.url, "labelloop_forwards_total") == DISTINCT  # each duplicate forwarded once
        assert _counter(a.url, "labelloop_memo_hits_total") == DISTINCT
        assert sum(len(r["result"]) for r in first) > 0
        assert _regions(first[:DISTINCT]) == _regions(first[DISTINCT:])
        for _ in range(3):  # gunicorn gives these to either worker: none forwards
            assert _regions(_predict(a.url, tasks)) == _regions(first)
        assert _counter(a.url, "labelloop_forwards_total") == DISTINCT
        assert _counter(a.url, "labelloop_memo_hits_total") == DISTINCT + 3 * len(tasks)
        r = Redis.from_url(redis_url)
        assert len(list(r.scan_iter(f"{prefix}:memo:*:*", count=1000))) == DISTINCT
        b = BackendProcess(tmp_path / "b", onnx_model, redis_url, env, settings=settings)
        started.append(b.start(timeout=120))
        assert _regions(_predict(b.url, tasks)) == _regions(first)
        assert _counter(b.url, "labelloop_forwards_total") == 0
    finally:
        for p in started:
            p.stop()
        r = Redis.from_url(redis_url)
        for k in r.scan_iter(f"{prefix}:*", count=1000):
            r.delete(k)


def _service(settings: Settings, weights: Path) -> PredictionService:
    return PredictionService(settings, weights)


@pytest.fixture
def memo_settings(pool: tuple[Path, list[dict]], redis_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    prefix = f"ll-memo-{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        local_roots=[pool[0]], image_cache_bytes=0, redis_url=redis_url, queue_prefix=prefix, device="cpu",
        cache_dir=tmp_path / "cache",
    )  # fmt: skip
    yield settings
    r = Redis.from_url(redis_url)
    for k in r.scan_iter(f"{prefix}:*", count=1000):
        r.delete(k)


def test_another_model_version_or_threshold_misses_the_memo(
    onnx_model: Path, pool: tuple[Path, list[dict]], memo_settings: Settings, tmp_path: Path
) -> None:
    _, tasks = pool
    base = _service(memo_settings, onnx_model).predict_tasks(tasks, SHAPES_CONFIG)
    assert (base.memo.forwards, base.memo.hits) == (DISTINCT, DISTINCT)
    again = _service(memo_settings, onnx_model).predict_tasks(tasks, SHAPES_CONFIG)
    assert (again.memo.forwards, again.memo.hits) == (0, len(tasks))
    assert _regions(again.results) == _regions(base.results)  # type: ignore[arg-type]
    stricter = _service(memo_settings.with_(conf=0.5), onnx_model).predict_tasks(tasks, SHAPES_CONFIG)
    assert stricter.memo.forwards == DISTINCT
    other = tmp_path / "other.onnx"
    shutil.copyfile(onnx_model, other)
    Path(f"{other}.version").write_text("other-v2")
    renamed = _service(memo_settings, other).predict_tasks(tasks, SHAPES_CONFIG)
    assert renamed.memo.forwards == DISTINCT and renamed.model_version == "other-v2"


def test_redis_down_predicts_without_the_memo(
    onnx_model: Path, pool: tuple[Path, list[dict]], memo_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    _, tasks = pool
    up = _service(memo_settings, onnx_model).predict_tasks(tasks, SHAPES_CONFIG)
    down_settings = memo_settings.with_(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    caplog.set_level("WARNING")
    down = _service(down_settings, onnx_model)
    for _ in range(2):
        report = down.predict_tasks(tasks, SHAPES_CONFIG)
        assert report.predicted == len(tasks) and report.memo.forwards == DISTINCT
        assert _regions(report.results) == _regions(up.results)  # type: ignore[arg-type]
    said = [r for r in caplog.records if "result memo" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]  # once per outage, not per batch


def test_the_memo_is_bounded(
    onnx_model: Path, pool: tuple[Path, list[dict]], memo_settings: Settings
) -> None:
    _, tasks = pool
    settings = memo_settings.with_(memo_entries=4)
    _service(settings, onnx_model).predict_tasks(tasks, SHAPES_CONFIG)
    r = Redis.from_url(settings.queue.redis_url)
    prefix = settings.queue.prefix
    assert r.zcard(f"{prefix}:memo:index") == 4
    assert (
        len(list(r.scan_iter(f"{prefix}:memo:*:*", count=1000))) == 4
    )  # entries; the index key has no second colon
    ttl = r.ttl(next(iter(r.scan_iter(f"{prefix}:memo:*:*", count=1000))))
    assert 0 < ttl <= settings.predict.memo_ttl_s

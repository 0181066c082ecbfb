"""Building the demo model shows a bar over its epochs, with the time left."""

from __future__ import annotations

import io
import re
from pathlib import Path

from rich.console import Console

from labelloop.backend.inference.demo_model import RECIPE, build_demo_model, demo_model_path


def test_demo_build_shows_epoch_progress_and_time_left(tmp_path: Path) -> None:
    recipe = {**RECIPE, "epochs": 2, "n_train": 8, "n_val": 4, "imgsz": 64}
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=140, color_system=None)
    path = build_demo_model(tmp_path, recipe=recipe, console=console)
    assert path == demo_model_path(tmp_path, recipe) and path.is_file()
    assert path != demo_model_path(tmp_path)  # the recipe is part of the cache key
    text = out.getvalue()
    assert "building the demo model" in text
    assert "epoch 1/2" in text and "epoch 2/2" in text
    assert re.search(r"left \d+:\d\d:\d\d", text), text[-800:]

    quiet = io.StringIO()
    assert build_demo_model(tmp_path, recipe=recipe, console=Console(file=quiet)) == path  # cached
    assert quiet.getvalue() == ""

"""The ``labelloop`` command, one module per command group. User errors print one line naming
what to fix (exit 2), never a traceback."""

from __future__ import annotations

import sys

from labelloop.cli import (  # noqa: F401  (they register commands)
    bench,
    dataset,
    demo,
    export,
    jobs,
    models,
    prelabel,
    pull,
    select,
    serve,
    simulate,
    sync,
    train,
)
from labelloop.cli.common import app
from labelloop.errors import LabelloopError


def main() -> None:
    try:
        app()
    except LabelloopError as e:
        sys.stderr.write(f"error: {e}\n")  # unwrapped: one line a user can grep
        raise SystemExit(2) from None

"""``labelloop sync``: keep the dataset store in step with Label Studio and CVAT.

Long-running by default (a pass every ``sync.interval_s``, sooner when a webhook event arrives;
Ctrl-C stops it between passes); ``--once`` runs one pass, with reconciliation, and exits non-zero
when a source failed. Sources come from ``[[sync.sources]]`` in labelloop.toml, or one is given
here with ``-t labelstudio --project N`` / ``-t cvat --task N``.
"""

from __future__ import annotations

import json
import signal
import threading
from typing import Annotated

import typer

from labelloop.cli.common import TokenOpt, UrlOpt, app, console, platform_overrides, setup_logging
from labelloop.errors import ConfigError
from labelloop.settings import SyncSource, load_settings


@app.command()
def sync(
    target: Annotated[str | None, typer.Option("--target", "-t", help="labelstudio or cvat")] = None,
    project: Annotated[int | None, typer.Option(help="Label Studio project")] = None,
    task: Annotated[int | None, typer.Option(help="CVAT task")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    once: Annotated[bool, typer.Option("--once", help="one pass (with reconciliation), then exit")] = False,
    interval: Annotated[float | None, typer.Option(help="seconds between passes (sync.interval_s)")] = None,
    store: Annotated[str | None, typer.Option("--store", help="store URL (LABELLOOP_STORE_URL)")] = None,
    no_trigger: Annotated[bool, typer.Option("--no-trigger", help="never enqueue a retrain")] = False,
    json_: Annotated[bool, typer.Option("--json", help="print each pass as one JSON line on stdout")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Pull corrected annotations into the versioned store; version and trigger retraining."""
    from labelloop.backend.registry.lines import trained_on  # lazy: MLflow costs ~1 s to import
    from labelloop.cli.common import progress_bar
    from labelloop.sync.prelabel import no_bar
    from labelloop.sync.service import SyncService
    from labelloop.sync.store import Store

    setup_logging(verbose)
    overrides: dict = platform_overrides(target, url, token) if target else {}
    if interval is not None:
        overrides.setdefault("sync", {})["interval_s"] = interval
    if store:
        overrides["store"] = {"url": store}
    settings = load_settings(**overrides)
    sources = _sources(settings.sync.sources, target, project, task, url)
    with Store.open(settings=settings) as st:
        service = SyncService(
            settings,
            st,
            sources,
            trained_on=trained_on(settings),
            bar=progress_bar if once and not json_ else no_bar,  # a daemon prints one line per pass
            enqueue=not no_trigger,
        )

        def show(report) -> None:  # type: ignore[no-untyped-def]
            if json_:
                typer.echo(json.dumps(report.to_dict(), default=str))
            else:
                console.print(report.line())
                for s in report.sources:
                    if not s.ok:
                        console.print(f"  [yellow]{s.source}: {s.error}[/yellow]")
                for e in report.errors:
                    console.print(f"  [yellow]{e}[/yellow]")
                if report.trigger:
                    console.print(f"  trigger: {report.trigger}")

        if once:
            try:
                report = service.run_once(force_reconcile=True)
            finally:
                service.close()
            show(report)
            if not report.ok:
                raise typer.Exit(1)
            return
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        console.print(f"syncing {len(sources)} source(s) every {settings.sync.interval_s:g}s; Ctrl-C stops")
        try:
            service.run(stop=stop, on_pass=show)
        except KeyboardInterrupt:
            stop.set()
        console.print("sync stopped")


def _sources(
    configured: list[SyncSource], target: str | None, project: int | None, task: int | None, url: str | None
) -> list[SyncSource]:
    if target is None:
        if project is not None or task is not None:
            raise ConfigError("--project / --task need --target (-t labelstudio or -t cvat)")
        return configured
    if target == "labelstudio" and project is None:
        raise ConfigError("-t labelstudio needs --project N")
    if target == "cvat" and task is None:
        raise ConfigError("-t cvat needs --task N")
    spec = {"project": project} if target == "labelstudio" else {"task": task}
    return [SyncSource(platform=target, url=url, **spec)]  # type: ignore[arg-type]

"""``labelloop simulate``: active-learning strategies against random on a labeled dataset played as
an unlabeled pool, with a bar over (strategy, seed, round) and the labels-saved table at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from labelloop.cli.common import app, emit_json, progress_bar, setup_logging

DEFAULT_STRATEGIES = "random,least_confidence,margin,entropy,coreset,hybrid"


@app.command("simulate")
def simulate_cmd(
    data: Annotated[Path, typer.Option("--data", help="an Ultralytics data.yaml, or a COCO JSON (the pool)")],
    base_weights: Annotated[Path, typer.Option("--base-weights", help="every round fine-tunes from these")],
    out: Annotated[Path, typer.Option("--out", help="results, plot and resumable state go here")],
    strategies: Annotated[
        str, typer.Option(help="comma-separated; random is the baseline")
    ] = DEFAULT_STRATEGIES,
    seeds: Annotated[int, typer.Option(min=1)] = 3,
    rounds: Annotated[int, typer.Option(min=1, help="trainings per strategy and seed")] = 4,
    budget: Annotated[int, typer.Option(min=1, help="images labeled per round")] = 20,
    initial: Annotated[int, typer.Option(min=1, help="random labeled images to start from")] = 20,
    epochs: Annotated[int, typer.Option(min=1, help="per round (CPU-sized; 20-50 on a GPU)")] = 3,
    imgsz: Annotated[int, typer.Option(min=32)] = 160,
    lr_scale: Annotated[
        float,
        typer.Option(
            "--lr-scale",
            help="the recipe's lr0 times this (1 on a GPU with real epochs; ~10 for CPU-sized rounds, "
            "where x1 leaves the base weights almost unchanged)",
        ),
    ] = 1.0,
    val: Annotated[Path | None, typer.Option("--val", help="COCO input: val's COCO JSON")] = None,
    images: Annotated[Path | None, typer.Option("--images", help="COCO input: image root")] = None,
    pseudo: Annotated[
        bool,
        typer.Option(
            "--pseudo/--no-pseudo",
            help="also run every strategy with pseudo-labels of the unselected pool (LABELLOOP_PSEUDO_*)",
        ),
    ] = False,
    t_cls: Annotated[
        str,
        typer.Option(
            "--t-cls", help="pseudo ablation: T_cls values to sweep, e.g. 0.8,0.9,0.95 (implies --pseudo)"
        ),
    ] = "",
    w_pseudo: Annotated[
        str,
        typer.Option(
            "--w-pseudo",
            help="pseudo ablation: w_pseudo values to sweep, e.g. 0.1,0.3,0.5 (implies --pseudo)",
        ),
    ] = "",
    json_: Annotated[bool, typer.Option("--json", help="print results.json on stdout")] = False,
) -> None:
    """Rounds of fine-tune -> eval on the fixed val split -> select -> label from ground truth, per
    strategy and seed; writes results.json, rounds.csv and learning_curves.png under --out. A rerun
    with the same arguments continues after the last finished round. With --pseudo each strategy
    also runs with pseudo-labels (the sweeps vary one factor at a time around the settings')."""
    from labelloop.backend.active.simulate import SimConfig, Simulation, ablations, load_data, write_outputs
    from labelloop.backend.active.strategies import STRATEGIES
    from labelloop.errors import ConfigError
    from labelloop.settings import load_settings

    setup_logging()
    names = [s.strip() for s in strategies.split(",") if s.strip()]
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown or not names:
        raise ConfigError(
            f"--strategies: unknown {', '.join(unknown) or '(none)'}; choose from {', '.join(STRATEGIES)}"
        )
    settings = load_settings()
    variants = ablations(pseudo, _floats("--t-cls", t_cls), _floats("--w-pseudo", w_pseudo), settings.pseudo)
    if not base_weights.is_file():
        raise ConfigError(f"--base-weights {base_weights} does not exist")
    out.mkdir(parents=True, exist_ok=True)
    cfg = SimConfig(names, seeds, rounds, budget, initial, epochs, imgsz, variants, lr_scale)
    sim = Simulation(settings, load_data(data, out, val=val, images=images), base_weights, cfg, out)
    with progress_bar("simulate", sim.steps()) as advance:
        sim.run(lambda _msg: advance(1))
    summary = sim.summary()
    paths = write_outputs(summary, out)
    if json_:
        emit_json(summary)
        return
    print_savings(summary, paths)


def _floats(flag: str, text: str) -> list[float]:
    """A comma-separated list of numbers in (0, 1]; one line naming the flag otherwise."""
    from labelloop.errors import ConfigError

    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: give numbers separated by commas, e.g. 0.8,0.9,0.95") from None
    if any(not 0.0 < v <= 1.0 for v in values):
        raise ConfigError(f"{flag} {text!r}: every value must be in (0, 1]")
    return values


def _share(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _mean_of(xs: list[float | None]) -> str:
    ok = [x for x in xs if x is not None]
    return f"{sum(ok) / len(ok):.2f}" if ok else "-"


def _pm(mean: float | None, std: float | None, fmt: str) -> str:
    return "-" if mean is None else f"{mean:{fmt}} ± {std or 0.0:{fmt}}"


def print_savings(summary: dict[str, Any], paths: dict[str, Path]) -> None:
    """The headline table: final mAP per strategy and the labels saved against random."""
    cfg = summary["config"]
    table = Table(
        title=f"labels to reach random's final mAP50-95 ({summary['pool']} pool, {summary['val']} val, "
        f"{cfg['seeds']} seeds, {cfg['rounds']} rounds of {cfg['budget']} after {cfg['initial']})"
    )
    for col in (
        "strategy (+ pseudo variant)",
        "final labels",
        "final mAP50-95",
        "labels needed",
        "saved vs random",
        "seeds reached",
        "val boxes prelabel matches (final)",
        "edits per selected image (mean)",
    ):
        table.add_column(col)
    sav = summary["savings"] or {}
    for s, c in summary["curves"].items():
        v = sav.get(s, {})
        final = (c["map50_95_mean"] or [None])[-1]
        table.add_row(
            s,
            str(int(c["labels"][-1])) if c["labels"] else "-",
            _pm(final, (c["map50_95_std"] or [None])[-1], ".4f"),
            "-" if v.get("labels_needed_mean") is None else f"{v['labels_needed_mean']:.1f}",
            _pm(v.get("saved_pct_mean"), v.get("saved_pct_std"), ".1f")
            + ("" if v.get("saved_pct_mean") is None else " %"),
            v.get("seeds_reached", "-"),
            _share((c.get("val_matched_share_mean") or [None])[-1]),
            _mean_of(c.get("selected_edits_per_image_mean") or []),
        )
    con = Console()
    con.print(table)
    if summary["savings"] is None:
        con.print("- no random run: savings need random as the baseline")
    elif left := next(iter(summary["savings"].values()))["seeds_left_out"]:
        con.print(
            f"- seeds {left}: random's mAP50-95 did not rise over the rounds; no saving is measured there"
        )
    for k, p in paths.items():
        con.print(f"{k}: {p}")

"""The model card of one training: what it was trained on and from, how it measured, what the gate
decided and why, and where the time went. Kept as JSON (for tools) and Markdown (for people) among
the run's artifacts."""

from __future__ import annotations

from typing import Any

from labelloop.backend.training.gate import GateDecision
from labelloop.backend.training.trainer import TrainResult


def model_card(
    *,
    line: str,
    model_version: str | None,
    run_id: str,
    parent: str | None,
    result: TrainResult,
    decision: GateDecision,
    promoted: bool,
    timings: dict[str, float],
    code_version: str,
) -> dict[str, Any]:
    return {
        "line": line,
        "model_version": model_version,
        "mlflow_run_id": run_id,
        "dataset_version": result.version_id,
        "parent_model": parent,
        "base_weights": str(result.base_weights),
        "code_version": code_version,
        "classes": result.names,
        "images": result.images,
        "recipe": result.recipe.params(),
        "metrics": decision.challenger.to_dict(),
        "champion_metrics": decision.champion.to_dict() if decision.champion else None,
        "gate": {
            "promote": decision.promote,
            "reason": decision.reason,
            "failed": decision.failed,
            "passed": decision.passed,
            "rules": decision.rules,
        },
        "promoted": promoted,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }


def card_markdown(card: dict[str, Any]) -> str:
    m = card.get("metrics") or {}
    champ = card.get("champion_metrics") or {}
    lines = [
        f"# {card['model_version'] or card['line']}",
        "",
        f"- model line: `{card['line']}`; MLflow run `{card['mlflow_run_id']}`",
        f"- trained on dataset version `{card['dataset_version']}` "
        f"(train {card['images'].get('train', 0)} / val {card['images'].get('val', 0)} images)",
        f"- from: {card['parent_model'] or card['base_weights']}",
        f"- code: {card['code_version']}",
        f"- **{'promoted to champion' if card['promoted'] else 'not promoted'}**: {card['gate']['reason']}",
        "",
        "## Metrics on the human-verified val split",
        "",
        "| metric | this model | champion |",
        "|---|---|---|",
    ]
    for key, name in (
        ("map50_95", "mAP50-95"),
        ("map50", "mAP50"),
        ("precision", "precision"),
        ("recall", "recall"),
        ("latency_ms", "latency ms/image"),
    ):
        lines.append(f"| {name} | {_num(m.get(key))} | {_num(champ.get(key))} |")
    per, per_champ = m.get("per_class") or {}, champ.get("per_class") or {}
    if per or per_champ:
        lines += ["", "## AP50-95 per class", "", "| class | this model | champion |", "|---|---|---|"]
        for name in sorted(set(per) | set(per_champ)):
            lines.append(f"| {name} | {_num(per.get(name))} | {_num(per_champ.get(name))} |")
    lines += ["", "## Recipe", ""]
    lines += [f"- {k}: {v}" for k, v in card["recipe"].items()]
    lines += ["", "## Time (s)", ""]
    lines += [f"- {k}: {v}" for k, v in card["timings_s"].items()]
    return "\n".join(lines) + "\n"


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

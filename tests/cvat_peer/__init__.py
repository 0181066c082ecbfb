"""A faithful CVAT 2.73 test peer for the real cvat-sdk client (see :mod:`tests.cvat_peer.server`)."""

from __future__ import annotations

from typing import Any

from cvat_sdk import Client, models

from tests.cvat_peer.server import CvatPeer

__all__ = ["CvatPeer", "patch_job_shapes"]


def patch_job_shapes(client: Client, action: str, job_id: int, *shapes: dict[str, Any]) -> None:
    """What a person's edit in CVAT's UI sends (``action`` create/update/delete), so tests act as
    annotators and reviewers through the real SDK under that person's own account."""
    client.api_client.jobs_api.partial_update_annotations(
        action,
        job_id,
        patched_labeled_data_request=models.PatchedLabeledDataRequest(
            shapes=[models.LabeledShapeRequest(**s) for s in shapes]
        ),
    )

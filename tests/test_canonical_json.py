"""The canonical JSON that ``labelloop pull`` writes: every field survives exactly."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labelloop.connectors.formats.canonical_json import item_from_dict, item_to_dict
from labelloop.errors import ConfigError
from labelloop.types import ImageItem, Provenance, Source
from tests.test_formats_roundtrip import ALL_KINDS, image_sizes, regions


@st.composite
def items(draw: st.DrawFn) -> ImageItem:
    kind = draw(st.sampled_from(ALL_KINDS))
    w, h = draw(image_sizes(kind))
    rs = draw(st.lists(regions(kind, w, h), max_size=3))
    rs = [
        r.with_(
            probs=draw(st.none() | st.just({"circle": 0.7, "square": 0.3})),
            provenance=Provenance(
                draw(st.sampled_from(list(Source))),
                "m1",
                draw(st.none() | st.just("ann@x")),
                None,
                "t0",
                "t1",
            ),
        )
        for r in rs
    ]
    return ImageItem(
        uri=draw(st.sampled_from(["/data/upload/1/a.jpg", "s3://b/k.png"])),
        width=w,
        height=h,
        regions=rs,
        sha256=draw(st.none() | st.just("ab" * 32)),
        group_id=draw(st.none() | st.just("scene-1")),
        score=draw(st.none() | st.floats(0, 1)),
        metadata=draw(
            st.sampled_from([{}, {"ls_task_id": 3, "lead_time": 1.5, "reviews": [{"accepted": True}]}])
        ),
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(item=items())
def test_item_json_roundtrip_is_exact(item: ImageItem) -> None:
    back = item_from_dict(json.loads(json.dumps(item_to_dict(item))))
    assert back == item


def test_bad_records_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="not a labelloop item"):
        item_from_dict({"uri": "x"})
    with pytest.raises(ConfigError, match="unknown geometry kind 'circle'"):
        item_from_dict(
            {"uri": "x", "width": 1, "height": 1, "regions": [{"label": "a", "geometry": {"kind": "circle"}}]}
        )

"""The list form of destination filters and transforms (DestinationPipeline.apply)."""

from __future__ import annotations

import copy
import random

import pytest

from proxy.config import DestinationConfig
from proxy.governance.filters import DestinationPipeline, sample_bucket
from proxy.governance.models import FilterStep
from proxy.governance.transform import Transform, load_transform

EVENT = {
    "type": "track", "event": "Order Completed", "userId": "u-1", "anonymousId": "a-1", "messageId": "m-1",
    "context": {"ip": "10.0.0.1", "library": {"name": "analytics.js"}, "traits": {"phone": "123"}},
    "properties": {"order_id": "o1", "revenue": 10, "currency": "USD", "email": "x@y.z", "coupon": "C"},
}


def pipeline(steps: list[dict], transform: str | None = None, budget: float = 1.0) -> DestinationPipeline:
    parsed = [FilterStep.model_validate(s) for s in steps]
    tx = Transform(transform, load_transform(transform), budget, "d") if transform else None
    return DestinationPipeline("d", parsed, tx)


def test_drop_and_allow_name_the_step():
    p = pipeline([
        {"drop": {"if": 'event == "Debug" or context.library.name startswith "test-"'}},
        {"allow": {"if": 'type in ["track", "identify"]'}},
    ])
    assert p.apply(EVENT).outcome == "deliver"
    a = p.apply(dict(EVENT, event="Debug"))
    assert (a.outcome, a.skip, a.events) == ("skip", "filter:1:drop", [])
    assert p.apply(dict(EVENT, context={"library": {"name": "test-suite"}})).skip == "filter:1:drop"
    assert p.apply({"type": "page", "userId": "u"}).skip == "filter:2:allow"
    assert p.apply({"type": "identify", "userId": "u"}).outcome == "deliver"
    assert p.reasons == ("filter:1:drop", "filter:2:allow")


def test_shorthands_as_steps():
    p = pipeline([{"types": ["track", "identify"]}, {"events": ["Order Completed"]}, {"exclude_events": ["Debug"]}])
    assert p.apply(EVENT).outcome == "deliver"
    assert p.apply({"type": "page"}).skip == "filter:1:types"
    assert p.apply(dict(EVENT, event="Other")).skip == "filter:2:events"
    assert p.apply({"type": "identify"}).outcome == "deliver"  # events/exclude_events concern track only
    p2 = pipeline([{"exclude_events": ["Debug"]}])
    assert p2.apply(dict(EVENT, event="Debug")).skip == "filter:1:exclude_events"


def test_drop_fields_copies_instead_of_changing_the_input():
    original = copy.deepcopy(EVENT)
    p = pipeline([{"drop_fields": ["properties.email", "context.ip", "traits.phone", "context.traits.phone",
                                   "properties.nothing"]}])
    a = p.apply(EVENT)
    assert EVENT == original
    out = a.events[0]
    assert "email" not in out["properties"] and "ip" not in out["context"] and out["context"]["traits"] == {}
    assert out["properties"]["order_id"] == "o1" and out["context"]["library"] == {"name": "analytics.js"}
    assert a.dropped_fields == ("properties.email", "context.ip", "context.traits.phone")
    # a field that is absent is not reported, and the event is not copied for nothing
    b = p.apply({"type": "track", "event": "x"})
    assert b.dropped_fields == () and b.events[0] == {"type": "track", "event": "x"}


def test_keep_fields_is_an_allow_list():
    original = copy.deepcopy(EVENT)
    p = pipeline([{"keep_fields": {"properties": ["order_id", "revenue", "currency", "products"],
                                   "context.traits": []}}])
    a = p.apply(EVENT)
    assert EVENT == original
    assert a.events[0]["properties"] == {"order_id": "o1", "revenue": 10, "currency": "USD"}
    assert a.events[0]["context"]["traits"] == {} and a.events[0]["context"]["ip"] == "10.0.0.1"
    assert sorted(a.dropped_fields) == ["context.traits.phone", "properties.coupon", "properties.email"]
    assert pipeline([{"keep_fields": {"properties": ["x"]}}]).apply({"type": "identify"}).dropped_fields == ()


def test_steps_run_in_order():
    # the field drop comes first, so the condition no longer sees the field
    p = pipeline([{"drop_fields": ["properties.coupon"]}, {"drop": {"if": "properties.coupon exists"}}])
    a = p.apply(EVENT)
    assert a.outcome == "deliver" and a.dropped_fields == ("properties.coupon",)
    q = pipeline([{"drop": {"if": "properties.coupon exists"}}, {"drop_fields": ["properties.coupon"]}])
    assert q.apply(EVENT).skip == "filter:1:drop"


def test_sampling_is_deterministic_per_user_and_holds_the_rate():
    p = pipeline([{"sample": {"percent": 10, "by": "userId"}}])
    users = [f"user-{i}" for i in range(100_000)]
    kept = {u for u in users if p.apply({"type": "track", "userId": u,
                                         "messageId": random.random()}).outcome == "deliver"}
    assert abs(len(kept) / len(users) - 0.10) <= 0.02
    # all in or all out: every event of a user gets the same answer, whatever else it carries
    for u in users[:2000]:
        answers = {p.apply({"type": t, "userId": u, "messageId": str(random.random()), "event": "e"}).outcome
                   for t in ("track", "identify", "page")}
        assert answers == {"deliver" if u in kept else "skip"}
    # the same on another pipeline instance (another process, another server): a stable hash
    again = pipeline([{"sample": {"percent": 10}}])
    assert {u for u in users[:5000] if again.apply({"type": "track", "userId": u}).outcome == "deliver"} \
        == {u for u in users[:5000] if u in kept}
    # raising the percentage only adds users
    wider = pipeline([{"sample": {"percent": 30}}])
    kept30 = {u for u in users if wider.apply({"type": "track", "userId": u}).outcome == "deliver"}
    assert kept <= kept30 and abs(len(kept30) / len(users) - 0.30) <= 0.02


def test_sampling_fallbacks_and_edges():
    p = pipeline([{"sample": {"percent": 50}}])
    # no userId: the anonymousId decides
    for i in range(200):
        anon = f"anon-{i}"
        assert p.apply({"type": "track", "anonymousId": anon}).outcome == \
            p.apply({"type": "track", "userId": "", "anonymousId": anon, "messageId": "x"}).outcome
    # numbers and strings of the same id are the same user
    assert p.apply({"type": "track", "userId": 1234}).outcome == p.apply({"type": "track", "userId": "1234"}).outcome
    assert pipeline([{"sample": {"percent": 100}}]).apply({"type": "track"}).outcome == "deliver"
    assert pipeline([{"sample": {"percent": 0}}]).apply(EVENT).skip == "filter:1:sample"
    # by another field; a seed draws a different sample
    by_order = pipeline([{"sample": {"percent": 50, "by": "properties.order_id"}}])
    outcomes = {by_order.apply({"type": "track", "userId": f"u{i}", "properties": {"order_id": "same"}}).outcome
                for i in range(50)}
    assert len(outcomes) == 1
    plain = [sample_bucket(f"u{i}") for i in range(1000)]
    seeded = [sample_bucket(f"u{i}", "other") for i in range(1000)]
    assert plain != seeded and all(0 <= b < 10_000 for b in plain + seeded)


def test_no_steps_is_inactive():
    assert not DestinationPipeline("d", []).active
    assert DestinationPipeline("d", []).apply(EVENT).events == [EVENT]


TX = "tests.governance.sample_transforms"


def test_transform_returning_one_event_gets_a_private_copy():
    original = copy.deepcopy(EVENT)
    a = pipeline([], f"{TX}:identity").apply(EVENT)
    assert a.outcome == "deliver" and a.events[0]["properties"]["seen_by_transform"] is True
    assert EVENT == original


@pytest.mark.parametrize("name", ["drop", "empty"])
def test_transform_returning_nothing_skips(name):
    a = pipeline([], f"{TX}:{name}").apply(EVENT)
    assert (a.outcome, a.skip) == ("skip", "transform")


def test_transform_returning_many_events_keeps_message_ids_distinct():
    a = pipeline([{"drop_fields": ["properties.email"]}], f"{TX}:split").apply(EVENT)
    assert a.outcome == "deliver" and [e["event"] for e in a.events] == ["Order Completed", "Second", "Third"]
    assert [e["messageId"] for e in a.events] == ["m-1", "m-1:1", "own-id"]
    assert a.dropped_fields == ("properties.email",) and all("email" not in e["properties"] for e in a.events)


def test_transform_exception_dead_letters_with_the_traceback():
    a = pipeline([], f"{TX}:boom").apply(EVENT)
    assert a.outcome == "dead" and a.events == [] and a.skip is None
    assert "Traceback" in a.error and "KeyError" in a.error and "sample_transforms.py" in a.error


@pytest.mark.parametrize("name,fragment", [("wrong_type", "returned str"), ("no_type", "without a valid type")])
def test_transform_unusable_result_dead_letters(name, fragment):
    a = pipeline([], f"{TX}:{name}").apply(EVENT)
    assert a.outcome == "dead" and fragment in a.error


def test_slow_transform_is_counted_not_stopped():
    from proxy.metrics import METRICS

    p = pipeline([], f"{TX}:slow", budget=0.001)
    before = METRICS.transform_slow.labels("d")._value.get()
    assert p.apply(EVENT).outcome == "deliver"
    assert p.transform.slow == 1 and METRICS.transform_slow.labels("d")._value.get() == before + 1
    fast = pipeline([], f"{TX}:identity", budget=10.0)
    fast.apply(EVENT)
    assert fast.transform.slow == 0


def test_filters_run_before_the_transform():
    a = pipeline([{"drop": {"if": 'event == "Order Completed"'}}], f"{TX}:boom").apply(EVENT)
    assert a.skip == "filter:1:drop"


def test_from_config_imports_the_transform():
    dest = DestinationConfig.model_validate({"name": "x", "type": "console", "transform": f"{TX}:identity",
                                             "filters": [{"types": ["track"]}]})
    p = DestinationPipeline.from_config(dest)
    assert p.active and p.apply(EVENT).events[0]["properties"]["seen_by_transform"]
    assert p.apply({"type": "page"}).skip == "filter:1:types"
    legacy = DestinationConfig.model_validate({"name": "y", "type": "console", "filters": {"types": ["track"]}})
    assert not DestinationPipeline.from_config(legacy).active and legacy.route_filters.types == ["track"]

"""Tracking plans: violations in Segment Protocols' shape, allow / flag / block decisions, and
plan inference."""

from __future__ import annotations

import pytest
import yaml

from proxy.governance.infer import infer_plan, plan_yaml
from proxy.governance.models import TrackingPlanConfig
from proxy.governance.plans import PlanError, SourcePlan, TrackingPlan

PLAN = {
    "events": {
        "Order Completed": {
            "type": "object", "required": ["order_id"],
            "properties": {"order_id": {"type": "string"}, "revenue": {"type": "number"},
                           "currency": {"enum": ["USD", "EUR"]}},
        },
        "Strict": {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False},
        "Anything": None,
    },
    "identify": {"type": "object", "properties": {"email": {"type": "string", "format": "email"}}},
    "group": {"type": "object", "required": ["name"]},
}


def plan(unplanned="allow", on_violation="flag") -> SourcePlan:
    return SourcePlan("web", TrackingPlan(PLAN), unplanned, on_violation)


def test_conforming_events_have_no_violations():
    p = plan()
    for event in ({"type": "track", "event": "Order Completed", "properties": {"order_id": "1", "revenue": 2.5}},
                  {"type": "track", "event": "Anything", "properties": {"x": [1]}},
                  {"type": "identify", "traits": {"email": "a@b.co"}},
                  {"type": "page", "name": "Home"}, {"type": "alias", "previousId": "x"}):
        assert p.check(event) == []
        assert p.decide(event).action == "allow"


def test_violations_have_segments_shape():
    p = plan()
    v = p.check({"type": "track", "event": "Order Completed", "properties": {"revenue": "ten", "currency": "GBP"}})
    assert [(x.type, x.field) for x in v] == [
        ("Required", "properties.order_id"), ("Type", "properties.revenue"), ("Enum", "properties.currency")]
    assert v[0].as_dict() == {"type": "Required", "field": "properties.order_id",
                              "description": "properties.order_id is required"}
    assert "ten" in v[1].description
    checked = p.check({"type": "track", "event": "Strict", "properties": {"a": "x", "b": 1}})
    assert [(x.type, x.field) for x in checked] \
        == [("Unplanned Property", "properties.b")]
    assert [(x.type, x.field) for x in p.check({"type": "identify", "traits": {"email": "nope"}})] \
        == [("Format", "traits.email")]
    assert [(x.type, x.field) for x in p.check({"type": "group", "groupId": "g", "traits": {}})] \
        == [("Required", "traits.name")]
    assert [(x.type, x.field) for x in p.check({"type": "track", "event": "Nope"})] == [("Unplanned", "event")]
    # no properties at all is an empty object, not a crash
    assert [x.type for x in p.check({"type": "track", "event": "Order Completed"})] == ["Required"]
    assert [x.type for x in p.check({"type": "track", "event": "Order Completed", "properties": "str"})] == ["Type"]


@pytest.mark.parametrize("unplanned,on_violation,event,action", [
    ("allow", "flag", {"type": "track", "event": "Nope"}, "allow"),
    ("flag", "flag", {"type": "track", "event": "Nope"}, "flag"),
    ("block", "allow", {"type": "track", "event": "Nope"}, "block"),
    ("allow", "flag", {"type": "track", "event": "Order Completed", "properties": {}}, "flag"),
    ("allow", "block", {"type": "track", "event": "Order Completed", "properties": {}}, "block"),
    ("block", "allow", {"type": "track", "event": "Order Completed", "properties": {}}, "allow"),
    ("allow", "block", {"type": "identify", "traits": {"email": 5}}, "block"),
])
def test_decisions(unplanned, on_violation, event, action):
    d = plan(unplanned, on_violation).decide(event)
    assert d.action == action and d.violations


def test_flag_annotates_context_violations_and_decide_is_pure():
    event = {"type": "track", "event": "Order Completed", "properties": {}, "context": {"ip": "1.2.3.4"}}
    d = plan().decide(event)
    assert d.action == "flag" and "violations" not in event["context"]
    d.annotate(event)
    assert event["context"] == {"ip": "1.2.3.4", "violations": [
        {"type": "Required", "field": "properties.order_id", "description": "properties.order_id is required"}]}
    bare = {"type": "track", "event": "Nope"}
    plan("flag").decide(bare).annotate(bare)
    assert bare["context"]["violations"][0]["type"] == "Unplanned"


def test_decisions_are_counted():
    from proxy.metrics import METRICS

    counter = METRICS.plan_violations.labels("web", "block")
    before = counter._value.get()
    plan("block").decide({"type": "track", "event": "Nope"})
    plan("block").decide({"type": "track", "event": "Anything"})
    assert counter._value.get() == before + 1


def test_defaults_are_not_written_into_events():
    p = SourcePlan("web", TrackingPlan({"events": {"E": {"type": "object", "properties": {"a": {"default": 1}}}}}))
    props: dict = {}
    assert p.check({"type": "track", "event": "E", "properties": props}) == [] and props == {}


@pytest.mark.parametrize("data,loc,fragment", [
    ({"events": {"E": {"type": "strin"}}}, ("events", "E", "type"), "invalid JSON Schema"),
    ({"events": {"E": {"properties": {"a": {"minimum": "x"}}}}}, ("events", "E", "properties", "a", "minimum"),
     "invalid"),
    ({"events": {"E": []}}, ("events", "E"), "a schema is a mapping"),
    ({"events": ["E"]}, ("events",), "events is a mapping"),
    ({"traits": {}}, ("traits",), "unknown key"),
    ({"events": {"E": {"$schema": "https://json-schema.org/draft/2020-12/schema"}}}, ("events", "E", "$schema"),
     "draft-07"),
    ({"events": {"E": {"$ref": "https://example.com/s.json"}}}, ("events", "E"), "Retrieval is disabled"),
])
def test_bad_plans_say_where(data, loc, fragment):
    with pytest.raises(PlanError) as err:
        TrackingPlan(data)
    assert err.value.loc == loc and fragment in err.value.message


def test_compile_from_inline_config():
    cfg = TrackingPlanConfig.model_validate({"events": {"E": None}, "unplanned_events": "block"})
    p = SourcePlan.compile("web", cfg)
    assert p.decide({"type": "track", "event": "F"}).action == "block"
    with pytest.raises(ValueError):
        TrackingPlanConfig.model_validate({"file": "x.yaml", "events": {}})


def test_infer_plan():
    events = [
        {"type": "track", "event": "Order Completed",
         "properties": {"order_id": "o1", "revenue": 10, "coupon": None, "products": [{"sku": "a", "price": 1.5}]}},
        {"type": "track", "event": "Order Completed", "properties": {"order_id": "o2", "revenue": 12.5}},
        {"type": "track", "event": "Signed Up"},
        {"type": "identify", "traits": {"email": "a@b.co", "age": 3}},
        {"type": "page", "name": "Home"},
        {"type": "track", "event": ""},
    ]
    plan_data, counts = infer_plan(events)
    assert counts == {"Order Completed": 2, "Signed Up": 1}
    oc = plan_data["events"]["Order Completed"]
    assert oc["type"] == "object" and oc["required"] == ["order_id", "revenue"]
    assert oc["properties"]["order_id"] == {"type": "string"}
    assert oc["properties"]["revenue"] == {"type": "number"}          # integer and float seen
    assert oc["properties"]["coupon"] == {"type": "null"}
    assert oc["properties"]["products"]["items"]["properties"]["price"] == {"type": "number"}
    assert plan_data["events"]["Signed Up"] == {"type": "object"}
    assert plan_data["identify"]["properties"]["age"] == {"type": "integer"} and "group" not in plan_data
    # the YAML is a valid plan, and the events it came from conform to it
    text = plan_yaml(plan_data, counts, "made by a test")
    assert text.startswith("# made by a test\n# events seen: Order Completed (2), Signed Up (1)\n")
    compiled = SourcePlan("web", TrackingPlan(yaml.safe_load(text)), "block", "block")
    assert all(compiled.check(e) == [] for e in events if e.get("event") != "")
    assert compiled.decide({"type": "track", "event": "Order Completed",
                            "properties": {"order_id": 5}}).action == "block"


def test_infer_mixed_types():
    plan_data, _ = infer_plan([{"type": "track", "event": "E", "properties": {"v": 1}},
                               {"type": "track", "event": "E", "properties": {"v": "one", "w": True}}])
    props = plan_data["events"]["E"]
    assert props["properties"]["v"] == {"type": ["integer", "string"]} and props["required"] == ["v"]
    assert props["properties"]["w"] == {"type": "boolean"}


def test_ingest_checks_a_plan_on_the_fields_it_reads_as_on_the_whole_event() -> None:
    """Ingest decodes only what a plan reads (event, properties, traits, context.traits): the
    violations must be those of the whole event, for every call and shape."""
    import orjson

    from proxy.ingest import _plan_view

    plan = SourcePlan("web", TrackingPlan({
        "events": {"Order Completed": {"type": "object", "required": ["order_id"],
                                       "properties": {"order_id": {"type": "string"}}}},
        "identify": {"type": "object", "required": ["email"]},
        "group": {"type": "object", "required": ["name"]},
    }), unplanned_events="flag", on_violation="flag")
    events = [
        ("track", {"event": "Order Completed", "properties": {"order_id": 5}, "context": {"page": {"url": "x"}}}),
        ("track", {"event": "Order Completed", "properties": {"order_id": "o-1"}}),
        ("track", {"event": "Unplanned", "properties": {}}),
        ("identify", {"traits": {"name": "x"}}),
        ("identify", {"context": {"traits": {"email": "a@b.co"}}}),  # analytics.js 1.x
        ("identify", {"context": {"traits": {}}, "traits": {"email": "a@b.co"}}),
        ("identify", {"context": "not an object"}),  # a batch's context replaces it: the whole event is read
        ("group", {"traits": {}}),
        ("page", {"name": "Home"}),
    ]
    for call_type, event in events:
        raw = orjson.dumps({"userId": "u", **event})
        whole = {**orjson.loads(raw), "type": call_type}
        assert plan.check(_plan_view(raw, call_type)) == plan.check(whole), (call_type, event)

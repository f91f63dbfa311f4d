"""Governance config through load_config and `trackrelay check`: precise errors with the file
line (and the column inside an expression); `trackrelay plan infer` on a real server's spool."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import yaml

from proxy.config import ConfigError, load_config
from proxy.governance import DestinationPipeline, SourcePlan
from tests.helpers import ROOT, TrackRelay


def write(tmp_path, text: str, name: str = "c.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def check(path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy", "check", "--config", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_check_reports_every_governance_problem_with_its_line(tmp_path):
    (tmp_path / "plans").mkdir()
    write(tmp_path, """
        events:
          Order Completed:
            type: object
            properties:
              revenue: {type: nmber}
        """, "plans/web.yaml")
    write(tmp_path, """
        def broken(:
            pass
        """, "broken_tx.py")
    path = write(tmp_path, """
        sources:
          - name: web
            write_keys: [k]
            tracking_plan: {file: plans/web.yaml, on_violation: reject}
          - name: ios
            write_keys: [k2]
            tracking_plan:
              events:
                Signed Up: {required: oops}
        destinations:
          - name: a
            type: console
            filters:
              - drop: {if: 'event = "Debug"'}
              - allow: {if: 'type in ["track"'}
              - sample: {percent: 150}
              - dorp: {if: 'true'}
              - {drop_fields: [properties.email], keep_fields: {properties: [a]}}
              - drop_fields: ["properties."]
          - name: b
            type: console
            transform: "no_such_module_xyz:fn"
          - name: c
            type: console
            transform: "broken_tx:fn"
          - name: d
            type: console
            transform: "not a spec"
          - name: e
            type: console
            transform: "tests.governance.sample_transforms:not_callable"
        """)
    out = check(path)
    assert out.returncode == 2, out.stdout
    err = out.stderr
    lines = err.splitlines()

    def has(*fragments):
        assert any(all(f in line for f in fragments) for line in lines), f"{fragments} not in:\n{err}"

    has("c.yaml:4: sources.0.tracking_plan.on_violation", "'allow', 'flag' or 'block'")
    has("c.yaml:14: destinations.0.filters.0.drop.if", "use '==' to compare (column 7 in: event = \"Debug\")")
    has("c.yaml:15: destinations.0.filters.1.allow.if",
        "expected ',' or ']' in the list that opens at column 9 (column 17 in:")
    has("c.yaml:16: destinations.0.filters.2.sample.percent", "less than or equal to 100")
    has("c.yaml:17: destinations.0.filters.3", "unknown filter 'dorp'")
    has("c.yaml:18: destinations.0.filters.4", "exactly one key")
    has("c.yaml:19: destinations.0.filters.5.drop_fields.0", "expected a field name after '.'")
    has("c.yaml:22: destinations.1.transform", "no module 'no_such_module_xyz'")
    has("c.yaml:25: destinations.2.transform", "SyntaxError", "broken_tx.py:1")
    has("c.yaml:28: destinations.3.transform", "is not 'package.module:function'")
    has("c.yaml:31: destinations.4.transform", "is not callable")
    # an inline plan: the line of the schema key; a plan file: that file's own line
    has("c.yaml:9: sources.1.tracking_plan.events.Signed Up.required", "invalid JSON Schema")
    has("web.yaml:5: events.Order Completed.properties.revenue.type", "invalid JSON Schema")
    assert "steps" not in err and "shorthands" not in err  # pydantic's union tags are not shown


def test_valid_config_loads_compiled_parts(tmp_path):
    write(tmp_path, "def tx(event):\n    return [event, dict(event, event='Copy')]\n", "my_tx.py")
    path = write(tmp_path, """
        sources:
          - name: web
            write_keys: [k]
            tracking_plan: {events: {Order Completed: {required: [order_id]}}, unplanned_events: block}
        destinations:
          - name: a
            type: console
            transform: my_tx:tx
            transform_budget: 2ms
            filters:
              - drop: {if: 'properties.internal == true'}
              - types: [track]
          - name: legacy
            type: console
            filters: {types: [identify]}
        """)
    out = check(path)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr
    assert "destination a: 2 filter step(s): drop, types; transform my_tx:tx (imported)" in out.stdout
    assert "source web: tracking plan with 1 event(s); unplanned events: block, violations: flag" in out.stdout
    cfg = load_config(path)
    a = cfg.destinations[0]
    assert a.transform_budget == 0.002 and a._transform is not None and a.route_filters.types is None
    pipe = DestinationPipeline.from_config(a)
    assert [e["event"] for e in pipe.apply({"type": "track", "event": "E", "messageId": "m"}).events] == ["E", "Copy"]
    assert pipe.apply({"type": "track", "properties": {"internal": True}}).skip == "filter:1:drop"
    assert pipe.apply({"type": "page"}).skip == "filter:2:types"
    plan = SourcePlan.from_config(cfg.sources[0])
    assert plan is cfg.sources[0]._plan and plan.decide({"type": "track", "event": "X"}).action == "block"
    assert SourcePlan.from_config(cfg.sources[0]) is plan
    from proxy.routing import Router

    targets, skipped = Router(cfg.destinations).route("web", {"type": "track", "event": "E"})
    assert targets == ["a"] and skipped == {"legacy": "filtered_by_type"}


def test_plan_file_problems(tmp_path):
    path = write(tmp_path, """
        sources:
          - {name: web, write_keys: [k], tracking_plan: {file: missing.yaml}}
        """)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "c.yaml:2: sources.0.tracking_plan.file" in str(err.value) and "cannot read the plan" in str(err.value)
    write(tmp_path, "events:\n  E: {type: object\n", "bad.yaml")
    path = write(tmp_path, """
        sources:
          - {name: web, write_keys: [k], tracking_plan: {file: bad.yaml}}
        """)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "bad.yaml:3" in str(err.value) and "invalid YAML" in str(err.value)
    write(tmp_path, "events: {}\nextra: 1\n", "extra.yaml")
    path = write(tmp_path, """
        sources:
          - {name: web, write_keys: [k], tracking_plan: {file: extra.yaml, events: {}}}
        """)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "either `file` or the plan inline" in str(err.value)


def test_example_config_validates_and_its_transform_works():
    cfg = load_config(ROOT / "config/examples/governance.yaml", env={})
    products = next(d for d in cfg.destinations if d.name == "products")
    pipe = DestinationPipeline.from_config(products)
    order = {"type": "track", "event": "Order Completed", "userId": "u", "messageId": "m1",
             "context": {"traits": {"email": "buyer@shop.test"}},
             "properties": {"order_id": "o1", "currency": "EUR",
                            "products": [{"product_id": "p1", "price": 2}, {"product_id": "p2", "price": 3}]}}
    out = pipe.apply(order)
    assert [e["event"] for e in out.events] == ["Order Completed", "Product Purchased", "Product Purchased"]
    assert [e["messageId"] for e in out.events] == ["m1", "m1:product:0", "m1:product:1"]
    assert out.events[2]["properties"] == {"order_id": "o1", "currency": "EUR", "product_id": "p2", "price": 3}
    assert "email" not in out.events[0]["context"]["traits"] and order["context"]["traits"]["email"]
    staff = dict(order, context={"traits": {"email": "me@example.com"}})
    assert pipe.apply(staff).skip == "transform"
    assert pipe.apply(dict(order, event="Debug")).skip == "filter:1:events"
    plan = SourcePlan.from_config(cfg.sources[0])
    assert plan.decide(order).action == "flag"  # revenue is required by the example plan
    assert plan.decide(dict(order, properties={**order["properties"], "revenue": 5})).action == "allow"


def test_plan_infer_from_a_running_servers_spool(tmp_path):
    with TrackRelay(tmp_path, sources=[{"name": "web", "write_keys": ["wk-web"]},
                                       {"name": "ios", "write_keys": ["wk-ios"]}]) as tr:
        batch = [
            {"type": "track", "event": "Order Completed", "userId": "u1",
             "properties": {"order_id": "o1", "revenue": 9.5}},
            {"type": "track", "event": "Order Completed", "userId": "u2", "properties": {"order_id": "o2"}},
            {"type": "identify", "userId": "u1", "traits": {"email": "a@b.co"}},
        ]
        assert tr.post("/v1/batch", {"writeKey": "wk-web", "batch": batch})[0] == 200
        assert tr.post("/v1/track", {"writeKey": "wk-ios", "event": "App Opened", "userId": "u3"})[0] == 200
    out_file = tmp_path / "plan.yaml"
    run = subprocess.run([sys.executable, "-m", "proxy", "plan", "infer", "--config", str(tr.config_path),
                          "--source", "web", "--since", "1h", "-o", str(out_file)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert run.returncode == 0, run.stderr
    plan = yaml.safe_load(out_file.read_text())
    assert list(plan["events"]) == ["Order Completed"]  # App Opened came from ios
    assert plan["events"]["Order Completed"]["required"] == ["order_id"]
    assert plan["identify"]["properties"]["email"] == {"type": "string"}
    assert "# events seen: Order Completed (2)" in out_file.read_text()
    # the written plan is accepted as a tracking plan
    cfg_path = write(tmp_path, f"sources:\n  - {{name: web, write_keys: [k], tracking_plan: {{file: {out_file}}}}}\n",
                     "with_plan.yaml")
    assert check(cfg_path).returncode == 0
    # nothing newer than "0s ago", and an unknown source
    none = subprocess.run([sys.executable, "-m", "proxy", "plan", "infer", "--config", str(tr.config_path),
                           "--source", "web", "--since", "2099-01-01T00:00:00Z"], capture_output=True, text=True,
                          cwd=ROOT)
    assert none.returncode == 1 and "nothing to infer" in none.stderr
    bad = subprocess.run([sys.executable, "-m", "proxy", "plan", "infer", "--config", str(tr.config_path),
                          "--source", "android"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "no source 'android'" in bad.stderr

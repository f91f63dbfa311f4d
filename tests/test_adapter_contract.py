"""The adapter contract, checked over every registered destination type."""

from __future__ import annotations

import copy
import logging

import orjson
import pytest
from pydantic import SecretStr, ValidationError

from destinations import registry
from destinations.base import Adapter, Built, Message, Request, Response, Verdict
from tests.fixtures.messages import ALL

ADAPTERS = registry.all_adapters()
IDS = [a.type for a in ADAPTERS]


def _secret_values(settings) -> list[str]:
    found: list[str] = []

    def walk(value):
        if isinstance(value, SecretStr):
            found.append(value.get_secret_value())
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        elif hasattr(type(value), "model_fields"):
            for name in type(value).model_fields:
                walk(getattr(value, name))

    walk(settings)
    return [s for s in found if s and s != "passthrough"]


@pytest.mark.parametrize("adapter", ADAPTERS, ids=IDS)
def test_example_settings_validate(adapter: Adapter) -> None:
    assert adapter.settings.example, f"{adapter.type} declares no example settings"
    settings = adapter.validate_settings(adapter.settings.example)
    assert settings.type == adapter.type


@pytest.mark.parametrize("adapter", ADAPTERS, ids=IDS)
def test_every_field_is_described(adapter: Adapter) -> None:
    for name, field in adapter.settings.model_fields.items():
        assert field.description, f"{adapter.type}.{name} has no description"


@pytest.mark.parametrize("adapter", ADAPTERS, ids=IDS)
def test_unknown_keys_are_refused(adapter: Adapter) -> None:
    with pytest.raises(ValidationError) as err:
        adapter.validate_settings({**adapter.settings.example, "no_such_setting": 1})
    assert "no_such_setting" in str(err.value)


@pytest.mark.parametrize("adapter", ADAPTERS, ids=IDS)
def test_endpoint_is_overridable_where_there_is_one(adapter: Adapter) -> None:
    if "endpoint" not in adapter.settings.model_fields:
        pytest.skip(f"{adapter.type} has no base URL (it takes a full url or has no HTTP API)")
    s = adapter.validate_settings({**adapter.settings.example, "endpoint": "http://127.0.0.1:1/x"})
    built = adapter.build_requests([Message(m) for m in ALL], s)
    assert built.requests, "no request built for the full fixture set"
    for req in built.requests:
        assert req.url.startswith("http://127.0.0.1:1/x"), req.url


@pytest.mark.parametrize("adapter", ADAPTERS, ids=IDS)
def test_secrets_never_appear_in_repr_logs_or_errors(adapter: Adapter, caplog) -> None:
    settings = adapter.validate_settings(adapter.settings.example)
    secrets = _secret_values(settings)
    text = repr(settings) + str(settings) + str(settings.model_dump())
    built = adapter.build_requests([Message(m) for m in ALL], settings)
    text += repr(built)
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("test").info("settings %s built %s", settings, built)
    text += caplog.text
    # a validation error caused by another field must not echo the secrets either
    bad = {**adapter.settings.example, "no_such_setting": 1}
    try:
        adapter.validate_settings(bad)
    except ValidationError as exc:
        text += str(exc)
    for secret in secrets:
        assert secret not in text, f"{adapter.type} leaks a secret"


@pytest.mark.parametrize("adapter", ADAPTERS, ids=IDS)
def test_build_requests_is_deterministic_and_pure(adapter: Adapter) -> None:
    settings = adapter.validate_settings(adapter.settings.example)
    messages = [Message(copy.deepcopy(m), source="web") for m in ALL]
    before = copy.deepcopy([m.event for m in messages])
    a = adapter.build_requests(messages, settings)
    b = adapter.build_requests(messages, settings)
    assert isinstance(a, Built)
    assert [(r.method, r.url, dict(r.headers), r.body, r.messages) for r in a.requests] == [
        (r.method, r.url, dict(r.headers), r.body, r.messages) for r in b.requests
    ]
    assert a.skips == b.skips and a.rejects == b.rejects
    assert [m.event for m in messages] == before, "build_requests mutated its input"


class _JsonOnly:
    """Leased work that has only JSON: reading the parsed event fails the test."""

    def __init__(self, event: dict) -> None:
        self.raw = orjson.dumps(event)

    def parsed(self) -> dict:
        raise AssertionError("read Message.event, but forwards_json says the adapter reads only json()")

    def json(self) -> bytes:
        return self.raw


@pytest.mark.parametrize("adapter", [a for a in ADAPTERS if a.forwards_json], ids=lambda a: a.type)
def test_an_adapter_that_forwards_json_reads_nothing_else(adapter: Adapter) -> None:
    # delivery lets go of the parsed event for these adapters (engine.deliver): they must not need it
    settings = adapter.validate_settings(adapter.settings.example)
    messages = [Message(None, "web", lazy=_JsonOnly(m)) for m in ALL]
    built = adapter.build_requests(messages, settings)
    assert built.requests and not built.rejects
    assert b"".join(r.body or b"" for r in built.requests).count(b'"messageId"') == len(ALL)


def test_forwards_json_is_declared_by_the_pass_through_adapters():
    assert {a.type for a in ADAPTERS if a.forwards_json} == {"webhook", "console"}


@pytest.mark.parametrize("adapter", ADAPTERS, ids=IDS)
def test_every_message_is_accounted_for(adapter: Adapter) -> None:
    settings = adapter.validate_settings(adapter.settings.example)
    messages = [Message(m, source="web") for m in ALL]
    built = adapter.build_requests(messages, settings)
    covered = {i for r in built.requests for i in r.messages}
    covered |= {s.index for s in built.skips} | {r.index for r in built.rejects}
    assert covered == set(range(len(messages))), "some message is neither sent, skipped nor rejected"
    for s in built.skips + built.rejects:
        assert s.reason, "a skip/reject without a reason"


@pytest.mark.parametrize("adapter", ADAPTERS, ids=IDS)
def test_requests_respect_batch_limits(adapter: Adapter) -> None:
    settings = adapter.validate_settings(adapter.settings.example)
    many = [Message({**m, "messageId": f"{m['messageId'][:20]}-{n}"}, source="web")
            for n in range(40) for m in ALL]
    built = adapter.build_requests(many, settings)
    for req in built.requests:
        assert isinstance(req, Request)
        assert len(req.messages) <= adapter.limits.max_events
        assert len(req.body or b"") <= adapter.limits.max_bytes


@pytest.mark.parametrize("adapter", ADAPTERS, ids=IDS)
def test_classify_server_errors_retry_and_bad_requests_are_permanent(adapter: Adapter) -> None:
    req = Request("POST", "http://x", {}, b"[]", (0,))
    assert adapter.classify(req, Response(503, {}, b"unavailable")).verdict is Verdict.RETRY
    assert adapter.classify(req, Response(429, {"Retry-After": "7"}, b"")).retry_after == 7
    assert adapter.classify(req, Response(401, {}, b'{"error":"bad auth"}')).verdict is Verdict.PERMANENT

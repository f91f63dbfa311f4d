"""The Segment message model as the Tracking API accepts it: call types, paths, and the per-item
checks that decide whether an event is stored or rejected (with a reason).

This is hand-written rather than a pydantic model on purpose: it runs for every event on the hot
path, where a pydantic validation costs ~2.6x these checks (DESIGN.md, "Measured"), and it must
keep every unknown field of the client's message untouched.
"""

from __future__ import annotations

from typing import Any

TYPES = ("track", "identify", "page", "screen", "group", "alias")

# path segment -> call type (None: a batch endpoint)
PATHS: dict[str, str | None] = {
    "track": "track", "identify": "identify", "page": "page", "screen": "screen",
    "group": "group", "alias": "alias",
    "t": "track", "i": "identify", "p": "page", "s": "screen", "g": "group", "a": "alias",
    "batch": None, "b": None, "import": None,
}
SHORT_PATHS = frozenset({"t", "i", "p", "s", "g", "a", "b"})

_OBJECT_FIELDS = ("properties", "traits", "context", "integrations")
_STRING_FIELDS = ("event", "name", "category", "timestamp", "originalTimestamp", "sentAt")


class Invalid(Exception):
    """An event that cannot be stored; ``reason`` is a short code, ``message`` explains."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _id(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise Invalid("invalid_field_type", f"{field} must be a string")
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return value if value.strip() else None
    raise Invalid("invalid_field_type", f"{field} must be a string")


def check(item: Any, call_type: str | None, max_message_id: int) -> dict[str, Any]:
    """Validate one item in place and return it with its type set. ``call_type`` comes from the
    path for single-event endpoints (it wins over the body's); batches need ``type`` per item."""
    if not isinstance(item, dict):
        raise Invalid("not_an_object", "each event must be a JSON object")
    if call_type is None:
        call_type = item.get("type")
        if not isinstance(call_type, str) or call_type not in TYPES:
            raise Invalid("invalid_type", f"type must be one of {', '.join(TYPES)}")
    item["type"] = call_type

    for field in _OBJECT_FIELDS:
        value = item.get(field)
        if value is not None and not isinstance(value, dict):
            raise Invalid("invalid_field_type", f"{field} must be an object")
    for field in _STRING_FIELDS:
        value = item.get(field)
        if value is not None and not isinstance(value, str):
            raise Invalid("invalid_field_type", f"{field} must be a string")

    user_id = _id(item.get("userId"), "userId")
    anonymous_id = _id(item.get("anonymousId"), "anonymousId")
    if user_id is None:
        item.pop("userId", None)
    else:
        item["userId"] = user_id
    if anonymous_id is None:
        item.pop("anonymousId", None)
    else:
        item["anonymousId"] = anonymous_id

    if call_type == "alias":
        previous = _id(item.get("previousId"), "previousId")
        if previous is None:
            raise Invalid("missing_previous_id", "alias needs previousId")
        item["previousId"] = previous
        if user_id is None:
            raise Invalid("missing_user_id", "alias needs userId")
    elif user_id is None and anonymous_id is None:
        raise Invalid("missing_identity", "userId or anonymousId is required")

    if call_type == "track":
        event = item.get("event")
        if not isinstance(event, str) or not event.strip():
            raise Invalid("missing_event_name", "track needs an event name")
    elif call_type == "group":
        group_id = _id(item.get("groupId"), "groupId")
        if group_id is None:
            raise Invalid("missing_group_id", "group needs groupId")
        item["groupId"] = group_id

    message_id = item.get("messageId")
    if message_id is not None:
        message_id = _id(message_id, "messageId")
        if message_id is None:
            item.pop("messageId", None)
        elif len(message_id) > max_message_id:
            raise Invalid("message_id_too_long", f"messageId is longer than {max_message_id} characters")
        else:
            item["messageId"] = message_id
    return item


def _normal_id(item: dict[str, Any], field: str, drop_null: bool) -> None:
    value = item.get(field)
    if value is None:
        if drop_null:
            item.pop(field, None)
    elif type(value) is str:
        if not value or value.isspace():
            item.pop(field, None)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        item[field] = str(value)


def normalize(item: dict[str, Any], call_type: str | None) -> dict[str, Any]:
    """What :func:`check` changes in an item it accepts (type from the path, ids as strings, blank
    ids removed), without its checks: for items checked before (stored ones, when delivery reads
    them). Gives the same result as ``check`` on every item ``check`` accepts."""
    if call_type is not None:
        item["type"] = call_type
    else:
        call_type = item.get("type")
    _normal_id(item, "userId", True)
    _normal_id(item, "anonymousId", True)
    if call_type == "alias":
        _normal_id(item, "previousId", False)
    elif call_type == "group":
        _normal_id(item, "groupId", False)
    if item.get("messageId") is not None:
        _normal_id(item, "messageId", False)
    return item

"""Transforms used by the tests (imported by `transform: "tests.governance.sample_transforms:..."`)."""

from __future__ import annotations

import time


def identity(event):
    event.setdefault("properties", {})["seen_by_transform"] = True
    return event


def drop(event):
    return None


def empty(event):
    return []


def split(event):
    second = dict(event, event="Second")
    third = dict(event, event="Third", messageId="own-id")
    return [event, second, third]


def boom(event):
    raise KeyError("no such thing: " + event["event"])


def wrong_type(event):
    return "a string"


def no_type(event):
    return {"event": "x"}


def slow(event):
    time.sleep(0.02)
    return event


not_callable = 42

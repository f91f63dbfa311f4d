"""Example transforms for `transform:` (see README "Transforms"). A transform gets one event (a
private copy: change it freely) and returns an event, a list of events, or None to drop it.

It runs inside the trackrelay server with the server's privileges: keep it pure and fast
(no network, no files, no sleeping); an exception dead-letters the event with the traceback.
"""

from __future__ import annotations

INTERNAL_DOMAINS = ("@example.com",)


def order_to_products(event: dict) -> dict | list[dict] | None:
    """For a tool that counts products: "Order Completed" also becomes one "Product Purchased"
    per product; events from internal (employee) accounts are dropped; the email goes nowhere."""
    traits = (event.get("context") or {}).get("traits") or {}
    email = str(traits.get("email") or "")
    if email.endswith(INTERNAL_DOMAINS):
        return None
    traits.pop("email", None)
    if event.get("type") != "track" or event.get("event") != "Order Completed":
        return event
    props = event.get("properties") or {}
    out = [event]
    for i, product in enumerate(props.get("products") or []):
        out.append({
            **{k: event[k] for k in ("type", "userId", "anonymousId", "timestamp", "context") if k in event},
            "event": "Product Purchased",
            "messageId": f"{event.get('messageId')}:product:{i}",
            "properties": {"order_id": props.get("order_id"), "currency": props.get("currency"), **product},
        })
    return out

"""Tools of the example `support` agent: deterministic, in-process, no I/O.

`issue_refund` is side-effecting: it keeps a ledger keyed by the idempotency key that
rayfleet passes, so a retried or resumed call returns the first refund instead of paying
twice, as a payment provider's idempotency store would. That ledger lives in the process that
runs the tool (a ToolPool actor in a cluster) and dies with it; the pool's durable effect
ledger (`actors/state/ledger.py`) answers a repeated key before the tool is even called.
"""

from __future__ import annotations

import re

from pydantic import JsonValue

_ORDERS: dict[int, dict[str, JsonValue]] = {
    1001: {
        "status": "shipped",
        "location": "in transit, Lyon sorting centre",
        "items": ["blue kettle"],
        "total_usd": 39.9,
    },
    1002: {
        "status": "delivered",
        "location": "delivered to the front desk",
        "items": ["desk lamp", "2 bulbs"],
        "total_usd": 54.5,
    },
    1003: {
        "status": "processing",
        "location": "warehouse, not yet shipped",
        "items": ["running shoes"],
        "total_usd": 89.0,
    },
}

_ARTICLES: tuple[dict[str, str], ...] = (
    {
        "id": "kb-returns",
        "title": "Returns and refunds",
        "body": "You can return any item within 30 days of delivery for a full refund. "
        "Refunds reach your card within 5 business days.",
    },
    {
        "id": "kb-shipping",
        "title": "Shipping times",
        "body": "Orders ship within 2 days. Standard delivery takes 3 to 5 days; "
        "express delivery takes 1 day. Track your order from your account page.",
    },
    {
        "id": "kb-password",
        "title": "Resetting your password",
        "body": "Use the forgot password link on the sign in page; we email you a reset link "
        "that works for one hour.",
    },
    {
        "id": "kb-address",
        "title": "Changing the delivery address",
        "body": "You can change the delivery address of an order until it ships, "
        "from the order page in your account.",
    },
)

# idempotency key -> refund record; in-process, like a payment provider's idempotency store.
_REFUNDS: dict[str, dict[str, JsonValue]] = {}


_STATES = (
    ("shipped", "in transit, Lyon sorting centre"),
    ("delivered", "delivered to the front desk"),
    ("processing", "warehouse, not yet shipped"),
    ("out for delivery", "on the courier's van, arriving today"),
)


def _order(order_id: int) -> dict[str, JsonValue] | None:
    """The demo shop's orders: a few fixed ones, and any other id from 1000 to 99999 made up
    deterministically from the id, so that any plausible order number has an answer."""
    if order_id in _ORDERS:
        return _ORDERS[order_id]
    if not 1000 <= order_id <= 99_999:
        return None
    status, location = _STATES[order_id % len(_STATES)]
    return {
        "status": status,
        "location": location,
        "items": [f"item #{order_id % 97}"],
        "total_usd": round(10 + (order_id % 900) / 10, 2),
    }


async def lookup_order(order_id: int) -> dict[str, JsonValue]:
    """An order's status, where it is, its items and total."""
    order = _order(order_id)
    if order is None:
        raise LookupError(f"no order {order_id} (order numbers run from 1000 to 99999)")
    return {"order_id": order_id, **order}


async def issue_refund(order_id: int, reason: str, idempotency_key: str) -> dict[str, JsonValue]:
    """Refund an order in full, once: a repeated idempotency key returns the first refund."""
    first = _REFUNDS.get(idempotency_key)
    if first is not None:
        return first
    order = _order(order_id)
    if order is None:
        raise LookupError(f"no order {order_id}")
    for earlier in _REFUNDS.values():
        if earlier["order_id"] == order_id:
            raise ValueError(f"order {order_id} was already refunded ({earlier['refund_id']})")
    record: dict[str, JsonValue] = {
        "refund_id": f"rf-{len(_REFUNDS) + 1:04d}",
        "order_id": order_id,
        "amount_usd": order["total_usd"],
        "reason": reason,
        "status": "refunded",
    }
    _REFUNDS[idempotency_key] = record
    return record


async def search_kb(query: str) -> list[dict[str, JsonValue]]:
    """The help articles sharing the most words with `query`, best first (at most 3)."""
    wanted = _words(query)
    scored = []
    for article in _ARTICLES:
        overlap = len(wanted & _words(article["title"] + " " + article["body"]))
        if overlap:
            scored.append((overlap, article))
    scored.sort(key=lambda pair: -pair[0])  # stable: ties keep the articles' order
    return [
        {"id": a["id"], "title": a["title"], "body": a["body"], "score": score}
        for score, a in scored[:3]
    ]


def refunds() -> dict[str, dict[str, JsonValue]]:
    """A copy of the refund ledger, keyed by idempotency key."""
    return dict(_REFUNDS)


def reset_refunds() -> None:
    """Empty the ledger (tests)."""
    _REFUNDS.clear()


_STOP = frozenset({"a", "an", "the", "to", "of", "my", "i", "is", "how", "do", "can", "you"})


def _words(text: str) -> set[str]:
    words = (w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOP)
    # A crude plural fold, enough for 'refund' to find 'refunds'.
    return {w[:-1] if len(w) > 3 and w.endswith("s") else w for w in words}

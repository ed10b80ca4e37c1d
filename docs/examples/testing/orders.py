"""A tiny app: placing an order reserves stock and sends a confirmation, as tasks."""

from __future__ import annotations

from dispatcher.publish import BoundTask, batch, task

OUTBOX: list[str] = []
"""Stands in for an email service."""
STOCK: dict[str, int] = {"apple": 5, "pear": 1}


@task(queue="emails", timeout=30)
def send_confirmation(order_id: int, email: str) -> str:
    OUTBOX.append(f"{email}: order {order_id} confirmed")
    return email


@task(queue="warehouse", bind=True)
def reserve_stock(dispatcher: BoundTask, order_id: int, items: dict[str, int]) -> None:
    for item, count in items.items():
        if STOCK.get(item, 0) < count:
            raise ValueError(f"not enough {item} for order {order_id}")
        STOCK[item] -= count
    dispatcher.control("run", {"task": "orders.audit", "args": [f"reserved {order_id}"]})


@task()  # no queue: the config's default channel
async def audit(event: str) -> str:
    return event.upper()


def place_order(order_id: int, email: str, items: dict[str, int]) -> None:
    with batch():
        reserve_stock.delay(order_id, items)
        send_confirmation.delay(order_id, email)

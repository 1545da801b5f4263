"""Order fulfilment: validate the address, charge the card, let the warehouse settle, ship.

Run a worker with ``dramatiq examples.orders`` and start an order from code::

    handle = zart.start(fulfil_order, order, execution_id=f"order-{order.id}")

It then waits, holding no worker thread, until the warehouse reports the shipment::

    zart-dramatiq send-event order-42 shipment_ready \\
        '{"tracking_number": "1Z999", "carrier": "UPS"}'

``python -m examples.demo`` does all of this end to end.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from decimal import Decimal

import dramatiq
from pydantic import BaseModel

import zart_dramatiq as zart

from .app import broker

logger = logging.getLogger(__name__)


class Order(BaseModel):
    id: str
    customer: str
    amount: Decimal


class Shipment(BaseModel):
    tracking_number: str
    carrier: str


class Receipt(BaseModel):
    order_id: str
    charge_id: str
    tracking_number: str
    carrier: str


def validate_address(order_id: str) -> bool:
    """Check the shipping address of the order with the carrier."""
    logger.info("Validated the address of order %s", order_id)
    return True


@zart.step
def charge_card(order_id: str, amount: Decimal) -> str:
    """Charge the customer's card; return the payment provider's charge id."""
    logger.info("Charged %s for order %s", amount, order_id)
    return f"ch_{order_id}"


@zart.durable(timeout=timedelta(minutes=30))
@dramatiq.actor(queue_name="orders", broker=broker)
def fulfil_order(order: Order) -> Receipt:
    """Fulfil ``order`` once its shipment is ready; each step runs once, even across crashes."""
    zart.step("validate-address", validate_address, order.id)
    charge_id = charge_card(order.id, order.amount)
    zart.sleep("warehouse-settle", timedelta(seconds=1))
    shipment = zart.wait_for_event("shipment_ready", timeout=timedelta(hours=1), model=Shipment)
    return Receipt(
        order_id=order.id,
        charge_id=charge_id,
        tracking_number=shipment.tracking_number,
        carrier=shipment.carrier,
    )

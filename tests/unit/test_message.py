"""The queue item record: JSON shape and delivery planning."""

from __future__ import annotations

import dataclasses
import json

from sesmail_gateway.message import Client, Delivery, QueueItem, RecipientRoute, plan_deliveries


def sample() -> QueueItem:
    recipients = [
        RecipientRoute("a@example.test", "*", "catch-all", [{"type": "maildir", "target": "mail"}]),
        RecipientRoute("b@example.test", "b@example.test", "exact",
                       [{"type": "maildir", "target": "mail"}, {"type": "forward-to-gmail", "target": "b@gmail.test"},
                        {"type": "store", "target": ""}]),
    ]
    return QueueItem(id="ID1", sender="s@sender.test", recipients=recipients, client=Client(ip="192.0.2.1"),
                     deliveries=plan_deliveries(recipients), verdicts={"spf": {"result": "pass"}})


def test_to_dict_matches_every_field_and_round_trips() -> None:
    item = sample()
    # The hand-written to_dict must stay in step with the dataclass fields.
    assert item.to_dict() == dataclasses.asdict(item)
    again = QueueItem.from_dict(json.loads(json.dumps(item.to_dict())))
    assert again == item


def test_deliveries_group_recipients_by_action_and_target() -> None:
    deliveries = sample().deliveries
    assert [(d.action, d.target, d.recipients) for d in deliveries] == [
        ("maildir", "mail", ["a@example.test", "b@example.test"]),
        ("forward-to-gmail", "b@gmail.test", ["b@example.test"]),
    ]  # "store" means archive only: no delivery
    assert all(isinstance(d, Delivery) and d.status == "pending" for d in deliveries)


def test_unknown_fields_in_old_records_are_ignored() -> None:
    data = sample().to_dict()
    data["field_from_the_future"] = 1
    assert QueueItem.from_dict(data).id == "ID1"

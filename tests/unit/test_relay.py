"""The SMTP worker's relay to the main process: a full pipe holds up only the thread that sends."""

from __future__ import annotations

import multiprocessing
import threading

from sesmail_gateway.relay import MetricsRelay


def test_a_full_pipe_blocks_the_sender_only_and_loses_nothing() -> None:
    reader, writer = multiprocessing.Pipe(duplex=False)
    relay = MetricsRelay(writer)
    relay.sealed("big.wal", False, 1)
    relay.queued("X" * (1 << 20))  # far more than a pipe holds: the send blocks until the reader reads
    sender = threading.Thread(target=relay.flush, daemon=True)
    sender.start()
    # While the sender waits for the main process, the journal's threads still record events.
    checkpoint = threading.Thread(target=lambda: (relay.sealed("next.wal", False, 2), relay.observe_commit(0.1, 3)),
                                  daemon=True)
    checkpoint.start()
    checkpoint.join(timeout=30)
    assert not checkpoint.is_alive(), "an event was held up by the blocked send"
    assert sender.is_alive()  # nobody has read yet
    kind, first = reader.recv()
    sender.join(timeout=30)
    relay.flush()
    _, second = reader.recv()
    assert kind == "events"
    assert [name for name, _ in first] == ["sealed", "queued"]
    assert second == [("sealed", ("next.wal", False, 2)), ("observe_commit", (0.1, 3))]


def test_a_heartbeat_is_an_empty_batch_and_only_when_asked() -> None:
    reader, writer = multiprocessing.Pipe(duplex=False)
    relay = MetricsRelay(writer)
    relay.flush()
    assert not reader.poll()
    relay.flush(heartbeat=True)
    assert reader.recv() == ("events", [])

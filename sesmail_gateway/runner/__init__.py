"""The runner: delivers each accepted message → delivered | deferred | held | dead, journal record first.

An accepted message reaches the runner as its journal record (``accept``;
``adopt`` for the journals of a process that is gone) and is archived and
delivered from there, without a spool folder: its journal segment is
retired once what the delivery wrote is durable. Only a message that must
outlive its segment (deferred, held, dead, refused at DATA, waiting for a
destination that is down, or not tried within a few seconds) gets a
durable folder, and is tried again from there (``incoming/`` polled, timers
for ``deferred/``). Blocking work (file I/O, SDK calls) runs in a thread
pool. A restart delivers again only what is still pending: a folder
records each attempt's outcome, and a journal replayed makes its local
copies again by the same names and skips the remote deliveries that the
delivered log holds.

    core.py       Runner: puts the parts together, feeds them work, runs the loop tasks
    journaled.py  accepted messages held as journal records, and their folders when they need one
    attempt.py    one attempt on one message: archive → deliver each pending group → settle
    outages.py    messages waiting for a destination that is down; destinations.json
    inflight.py   one attempt or operator action per message at a time; the attempt log; hangs
    timers.py     when each deferred message is due again
    operator.py   operator actions; held and refused messages
    backoff.py    the delay before the next attempt
"""

# The names the rest of the daemon uses. The timing constants are not repeated here: a test that sets
# one sets it in the module that reads it.
from sesmail_gateway.runner.backoff import backoff_delay
from sesmail_gateway.runner.core import Runner
from sesmail_gateway.runner.inflight import POISON_LIMIT, AttemptLog
from sesmail_gateway.runner.journaled import MEMORY
from sesmail_gateway.runner.outages import DESTINATIONS_FILE

__all__ = ["DESTINATIONS_FILE", "MEMORY", "POISON_LIMIT", "AttemptLog", "Runner", "backoff_delay"]

"""Every SMTP reply the gateway sends, defined once.

Client-facing text stays generic; the detail of why goes to the mail log.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    code: int
    enhanced: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"

    @property
    def is_temporary(self) -> bool:
        return 400 <= self.code < 500


OK = Reply(250, "2.0.0", "Ok")
SENDER_OK = Reply(250, "2.1.0", "Sender ok")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient ok")


def queued(queue_id: str) -> Reply:
    return Reply(250, "2.0.0", f"Ok: queued as {queue_id}")


RELAY_DENIED = Reply(550, "5.7.1", "Relaying denied: recipient domain not accepted here")
NO_SUCH_USER = Reply(550, "5.1.1", "Recipient address rejected: no such user here")
RULES_UNAVAILABLE = Reply(451, "4.3.0", "Temporary lookup failure, try again later")
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")
SPOOL_ERROR = Reply(451, "4.3.0", "Could not queue the message, try again later")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed limit")
BAD_ADDRESS = Reply(501, "5.1.3", "Bad recipient address syntax")
BAD_SENDER = Reply(501, "5.1.7", "Bad sender address syntax")
VRFY_SYNTAX = Reply(501, "5.5.4", "Syntax: VRFY <address>")
BAD_VRFY_ADDRESS = Reply(501, "5.1.3", "Bad address syntax")
CANNOT_VRFY = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_FROM_IP = Reply(421, "4.7.0", "Too many connections from your address, try again later")
TOO_MANY_JUNK = Reply(421, "4.7.0", "Too many unrecognised commands, closing connection")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, try again later")
TIMEOUT = Reply(421, "4.4.2", "Timeout exceeded, closing connection")
DATA_TIMEOUT = Reply(421, "4.4.2", "DATA timeout exceeded, closing connection")
DMARC_REJECT = Reply(550, "5.7.1", "Message rejected by the sender domain's DMARC policy")
SPF_REJECT = Reply(550, "5.7.23", "Message rejected: SPF validation failed")
FROM_REJECT = Reply(550, "5.7.1", "Message rejected: the From header is missing, repeated or has no domain")
VIRUS_REJECT = Reply(550, "5.7.1", "Message rejected: it contains a virus")
SPAM_REJECT = Reply(550, "5.7.1", "Message rejected as spam")
SENDER_BLOCKED = Reply(550, "5.7.1", "Message rejected: sender blocked by the recipient's policy")
SCAN_TEMPFAIL = Reply(451, "4.7.1", "Message could not be scanned, try again later")

"""Socket.IO packets with a bound on binary attachments.

A binary event arrives as one header packet that declares how many binary
attachments follow, then the attachments one message each. python-socketio
keeps every attachment in memory until the declared number has arrived, so a
client could declare thousands of attachments of `max_http_buffer_size` each
and make the server hold gigabytes for one event. No event of this protocol
carries more than one binary (a frame's image), so a header that declares
more is refused: its attachments are counted and dropped as they arrive, and
when the last one is in, the event is answered `bad_request` instead of being
handled (see `socketio_events.watch_events`). The connection stays open.

This is the packet class python-socketio lets an application choose (its
`serializer` option), rather than a patch of the server.
"""

from __future__ import annotations

import logging

from socketio import packet

#: Binary attachments one event may carry: a frame's image.
MAX_ATTACHMENTS = 1


class RefusedAttachments:
    """Stands in for the arguments of an event whose attachments were refused."""

    def __init__(self, declared: int, header=None):
        self.declared = declared
        #: The event's first argument with its binaries left out: the frame's
        #: id in it is echoed in the error, as for any refused frame.
        self.header = header

    def message(self) -> str:
        return (f"An event may carry at most {MAX_ATTACHMENTS} binary attachment "
                f"(the frame's image); this one declared {self.declared}.")


class BoundedPacket(packet.Packet):
    """A Socket.IO packet that refuses more than `MAX_ATTACHMENTS` attachments."""

    def decode(self, encoded_packet):
        count = super().decode(encoded_packet)
        self._refused = count > MAX_ATTACHMENTS
        self._dropped = 0
        return count

    def add_attachment(self, attachment) -> bool:
        if not getattr(self, "_refused", False):
            return super().add_attachment(attachment)
        # Count it, keep nothing: memory stays at one attachment at a time.
        self._dropped += 1
        if self._dropped < self.attachment_count:
            return False
        event = self.data[0] if isinstance(self.data, list) and self.data else None
        header = self.data[1] if isinstance(self.data, list) and len(self.data) > 1 else None
        self.data = [event, RefusedAttachments(self.attachment_count, header)]
        return True


class MalformedPacketLog(logging.Filter):
    """One line, not a traceback, for a packet the Socket.IO parser rejected.

    python-socketio parses packets inside Engine.IO's message handler and
    logs any parse failure there as "message handler error" with a full
    traceback. Our own handlers never fail that way (they run later, in their
    own task, behind `on_error_default`), so such a record is a client that
    sent a malformed packet: worth a line, not a page per packet.
    """

    #: Where a parse failure is raised: the packet parser, the JSON decoder,
    #: or python-socketio's dispatch of a packet with no event in it.
    PARSER_FILES = ("socketio/packet.py", "json/decoder.py", "json/__init__.py", "socketio/server.py")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage() == "message handler error" and record.exc_info and self._raised_by_parser(record):
            exc = record.exc_info[1]
            record.msg, record.args = "dropped a malformed Socket.IO packet from a client: %s: %.200s", (
                type(exc).__name__, exc)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True

    def _raised_by_parser(self, record: logging.LogRecord) -> bool:
        """Only failures raised inside the parser itself: a bug anywhere else
        (connect handling, the client manager, our code) keeps its traceback."""
        tb = record.exc_info[2]
        if tb is None:
            return False
        while tb.tb_next is not None:
            tb = tb.tb_next
        return tb.tb_frame.f_code.co_filename.replace("\\", "/").endswith(self.PARSER_FILES)


def quiet_malformed_packets() -> None:
    logger = logging.getLogger("engineio.server")
    if not any(isinstance(f, MalformedPacketLog) for f in logger.filters):
        logger.addFilter(MalformedPacketLog())

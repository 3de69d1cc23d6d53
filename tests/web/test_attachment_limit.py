"""Socket.IO packets with a bound on binary attachments, in process."""

from __future__ import annotations

import pytest

import json

from webapp.web.attachment_limit import BoundedPacket, RefusedAttachments

pytestmark = pytest.mark.quick  # in `make test-fast`


def header(count: int, frame_id="f-1") -> str:
    payload = ["frame", {"model": "shapes", "id": frame_id, "image": {"_placeholder": True, "num": 0}}]
    return f"5{count}-" + json.dumps(payload)


def test_a_frame_with_its_one_image_is_rebuilt_as_usual():
    packet = BoundedPacket(encoded_packet=header(1))
    assert packet.add_attachment(b"jpeg bytes") is True
    assert packet.data == ["frame", {"model": "shapes", "id": "f-1", "image": b"jpeg bytes"}]


def test_declared_attachments_beyond_one_are_counted_never_kept():
    packet = BoundedPacket(encoded_packet=header(10_000))
    chunk = b"\0" * 1024
    for _ in range(9_999):
        assert packet.add_attachment(chunk) is False
        assert packet.attachments == []  # nothing accumulates, however many arrive
    assert packet.add_attachment(chunk) is True
    event, refused = packet.data
    assert event == "frame" and isinstance(refused, RefusedAttachments)
    assert refused.declared == 10_000 and refused.header["id"] == "f-1"
    assert "at most 1" in refused.message() and "10000" in refused.message()

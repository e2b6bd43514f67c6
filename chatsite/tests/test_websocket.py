"""make serve's socket protocol helpers: a broadcast's text is framed, and
compressed, once per wire format, and the bytes are valid frames."""

import zlib

from websockets.extensions.permessage_deflate import PerMessageDeflate

from chatsite import websocket


def agreed_deflate():
    """The extension as the factory agrees it with a browser."""
    return PerMessageDeflate(True, True, websocket.WINDOW_BITS, websocket.WINDOW_BITS,
                             {"memLevel": websocket.MEM_LEVEL})


def test_a_text_written_to_many_sockets_is_framed_once_per_format(monkeypatch):
    calls = []
    real = websocket.frame_bytes

    def counting(text, extensions):
        calls.append(bool(extensions))
        return real(text, extensions)

    monkeypatch.setattr(websocket, "frame_bytes", counting)
    last = websocket.RecentTexts()
    text = '{"type":"message_batch","messages":[]}' * 20
    deflate = [[agreed_deflate()] for _ in range(3)]
    wires = [last.bytes_for(text, ext) for ext in deflate + [[], []]]
    assert sorted(calls) == [False, True]
    assert len(set(wires)) == 2
    other = (text + " ")[:-1]  # an equal text, another object: framed again
    last.bytes_for(other, [])
    assert len(calls) == 3
    last.bytes_for(text, [])  # still kept
    assert len(calls) == 3
    for i in range(websocket.RecentTexts.KEEP):
        last.bytes_for(f"filler {i}", [])
    last.bytes_for(text, [])  # pushed out by newer texts: framed again
    assert len(calls) == 4 + websocket.RecentTexts.KEEP


def test_frames_decode_to_the_text():
    text = '{"type":"message_batch","messages":[' + ",".join(['{"id":1}'] * 50) + "]}"
    plain = websocket.frame_bytes(text, [])
    assert plain[0] == 0x81 and plain[1] == 126
    assert plain[4:].decode() == text
    compressed = websocket.frame_bytes(text, [agreed_deflate()])
    assert compressed[0] == 0xC1  # FIN, RSV1 (compressed), text
    length = compressed[1]
    payload = compressed[2:2 + length] if length < 126 else compressed[4:]
    decoder = zlib.decompressobj(wbits=-websocket.WINDOW_BITS)
    assert decoder.decompress(payload + b"\x00\x00\xff\xff").decode() == text
    assert len(payload) < len(text) / 4


def test_the_inbox_hands_events_over_in_order_and_waits_when_empty():
    import asyncio

    async def run():
        inbox = websocket.Inbox()
        inbox.put_nowait(1)
        assert not inbox.empty() and await inbox.get() == 1 and inbox.empty()
        getter = asyncio.ensure_future(inbox.get())
        await asyncio.sleep(0)
        assert not getter.done()
        inbox.put_nowait(2)
        inbox.put_nowait(3)
        return await getter, await inbox.get()

    assert asyncio.run(run()) == (2, 3)


def test_the_gate_holds_writers_while_closed_and_lets_them_all_go():
    import asyncio

    async def run():
        gate = websocket.Gate()
        await gate.wait()  # open: no wait
        gate.clear()
        writers = [asyncio.ensure_future(gate.wait()) for _ in range(3)]
        await asyncio.sleep(0)
        held = [w.done() for w in writers]
        gate.set()
        await asyncio.gather(*writers)
        return held

    assert asyncio.run(run()) == [False, False, False]

"""A JSON client and a MessagePack client talking through the broker: same objects, each in its
own encoding (text frames for JSON, binary frames for MessagePack)."""

import json

import msgpack

from bbtest import Client, check, run

# Values that must survive JSON → broker → MessagePack and back.
SAMPLES = [
    0,
    -7,
    2**53,
    0.1,
    "héllo ⚡",
    "",
    True,
    None,
    [1, "two", [3.5, None]],
    {"nested": {"list": [1, 2, 3], "flag": False}, "unit": "°C"},
]


async def main(url):
    text = await Client.connect(url)  # JSON
    binary = await Client.connect(url, binary=True)  # MessagePack
    await binary.ok({"op": "hello", "name": "py-mp", "kind": "test"})
    await text.sub("bridge/#")
    await binary.sub("bridge/#")

    # JSON in, MessagePack out.
    for i, value in enumerate(SAMPLES):
        # No `id`: a successful pub is then not answered, so the next frames are the messages.
        await text.send({"op": "pub", "topic": f"bridge/from-json/{i}", "data": value})
        raw = await binary.recv_raw()
        assert isinstance(raw, bytes), f"MessagePack client got a text frame: {raw!r}"
        m = msgpack.unpackb(raw)
        assert m["op"] == "msg" and m["topic"] == f"bridge/from-json/{i}", m
        assert m["data"] == value and type(m["data"]) is type(value), (value, m)
        # The JSON publisher is subscribed too: it sees its own message, as JSON text.
        own = await text.recv_raw()
        assert isinstance(own, str) and json.loads(own)["data"] == value, own
    check(f"{len(SAMPLES)} JSON values arrive intact in binary MessagePack frames")

    # MessagePack in, JSON out, with `from`.
    for i, value in enumerate(SAMPLES):
        await binary.send({"op": "pub", "topic": f"bridge/from-msgpack/{i}", "data": value})
        raw = await text.recv_raw()
        assert isinstance(raw, str), f"JSON client got a binary frame: {raw!r}"
        m = json.loads(raw)
        assert m["topic"] == f"bridge/from-msgpack/{i}" and m["from"] == "py-mp", m
        assert m["data"] == value and type(m["data"]) is type(value), (value, m)
        assert (await binary.msg())["data"] == value
    check(f"{len(SAMPLES)} MessagePack values arrive intact in JSON text frames, with `from`")

    # Answers follow the encoding of the client's last frame.
    await binary.ws.send(json.dumps({"op": "ping", "id": 1}))
    raw = await binary.recv_raw()
    assert isinstance(raw, str) and json.loads(raw) == {"op": "pong", "id": 1}, raw
    await binary.ws.send(msgpack.packb({"op": "ping", "id": 2}))
    raw = await binary.recv_raw()
    assert isinstance(raw, bytes) and msgpack.unpackb(raw) == {"op": "pong", "id": 2}, raw
    check("the broker answers in the encoding of the client's last frame")

    await text.close()
    await binary.close()


run(main)

"""Publish/subscribe through the broker with wildcards, retained values and errors."""

from bbtest import Client, check, run


async def main(url):
    sub = await Client.connect(url)
    pub = await Client.connect(url)

    # Wildcards: `+` is one level, `#` any number (none included); overlapping filters deliver once.
    await sub.sub("sensors/+/temp")
    await sub.sub("sensors/#")
    await pub.pub("sensors/kitchen/temp", 21.5)
    m = await sub.msg()
    assert (m["topic"], m["data"], m.get("retained", False)) == ("sensors/kitchen/temp", 21.5, False), m
    assert "from" not in m, m  # the publisher never said hello
    await sub.nothing()
    check("+ and # both match; the message arrives once")

    await pub.pub("sensors/kitchen/humidity", {"pct": 40})
    assert (await sub.msg())["data"] == {"pct": 40}
    await pub.pub("sensors", "root")
    assert (await sub.msg())["topic"] == "sensors"
    await pub.pub("elsewhere/kitchen/temp", 1)
    await sub.nothing()
    check("# matches deeper levels and the parent itself; other topics stay out")

    # `#` alone does not match the broker's `$SYS` topics; naming them does.
    everything = await Client.connect(url)
    await everything.sub("#")
    sys_watch = await Client.connect(url)
    await sys_watch.sub("$SYS/nodes/+")
    named = await Client.connect(url)
    await named.ok({"op": "hello", "name": "py-pubsub", "kind": "test"})
    presence = await sys_watch.msg()
    assert presence["topic"] == "$SYS/nodes/py-pubsub", presence
    await everything.nothing()
    check("# leaves $SYS alone; $SYS/nodes/+ sees presence")

    # Messages from a named client carry `from`.
    await named.pub("sensors/hall/temp", 19)
    m = await sub.msg()
    assert m.get("from") == "py-pubsub", m
    check("messages from a named client carry `from`")

    # Retained values: replayed (flagged) to a new subscriber, before its `ok`.
    await pub.pub("lamp/desk/state", {"on": True}, retain=True)
    await pub.pub("lamp/door/state", {"on": False}, retain=True)
    late = await Client.connect(url)
    replay = await late.sub("lamp/+/state")
    got = {m["topic"]: (m["data"], m["retained"]) for m in replay}
    assert got == {
        "lamp/desk/state": ({"on": True}, True),
        "lamp/door/state": ({"on": False}, True),
    }, replay
    await pub.pub("lamp/desk/state", {"on": False}, retain=True)
    live = await late.msg()
    assert live["data"] == {"on": False} and live.get("retained", False) is False, live
    check("retained values replay to a late subscriber, flagged, then live updates follow")

    # `null` with retain clears the value: delivered live, then gone for newcomers.
    await pub.pub("lamp/door/state", None, retain=True)
    cleared = await late.msg()
    assert cleared["topic"] == "lamp/door/state" and cleared["data"] is None, cleared
    newer = await Client.connect(url)
    replay = await newer.sub("lamp/+/state")
    assert [m["topic"] for m in replay] == ["lamp/desk/state"], replay
    check("null + retain clears the retained value")

    # Unsubscribe stops delivery.
    await late.ok({"op": "unsub", "topic": "lamp/+/state"})
    await pub.pub("lamp/desk/state", {"on": True})
    await late.nothing()
    check("unsub stops delivery")

    # Errors answer the frame's id and leave the connection usable.
    answer, _ = await pub.request({"op": "pub", "topic": "a/+/b", "data": 1})
    assert answer["op"] == "err" and answer["code"] == "wildcard_topic", answer
    answer, _ = await pub.request({"op": "pub", "topic": "$SYS/mine", "data": 1})
    assert answer["op"] == "err" and answer["code"] == "reserved_topic", answer
    answer, _ = await pub.request({"op": "sub", "topic": "a+/b"})
    assert answer["op"] == "err" and answer["code"] == "bad_filter", answer
    answer, _ = await pub.request({"op": "dance"})
    assert answer["op"] == "err" and answer["code"] == "unknown_op", answer
    await pub.ws.send("not json")
    answer = await pub.recv()
    assert answer["op"] == "err" and answer["code"] == "bad_frame" and "id" not in answer, answer
    await pub.send({"op": "ping", "id": 99})
    assert await pub.recv() == {"op": "pong", "id": 99}
    check("errors carry codes and ids; the connection stays usable (ping → pong)")

    for c in (sub, pub, everything, sys_watch, named, late, newer):
        await c.close()


run(main)

"""Presence: `hello` names a client; the broker keeps `$SYS/nodes/<name>` (retained) up to date."""

import asyncio

from bbtest import Client, check, run


async def main(url):
    watch = await Client.connect(url)
    await watch.sub("$SYS/nodes/+")

    node = await Client.connect(url, binary=True)  # nodes usually speak MessagePack
    await node.ok({"op": "hello", "name": "py-thermo", "kind": "thermometer"})
    m = await watch.msg()
    assert m["topic"] == "$SYS/nodes/py-thermo", m
    d = m["data"]
    assert d["kind"] == "thermometer" and d["online"] is True, d
    assert isinstance(d["since"], int) and d["addr"].startswith("127.0.0.1:"), d
    check("hello publishes {kind, online, since, addr} on $SYS/nodes/<name>")

    late = await Client.connect(url)
    replay = await late.sub("$SYS/nodes/#")
    mine = [m for m in replay if m["topic"] == "$SYS/nodes/py-thermo"]
    assert len(mine) == 1 and mine[0]["retained"] is True and mine[0]["data"]["online"] is True, replay
    check("presence is retained: a late subscriber sees who is online")

    thief = await Client.connect(url)
    answer, _ = await thief.request({"op": "hello", "name": "py-thermo"})
    assert answer["op"] == "err" and answer["code"] == "name_taken", answer
    answer, _ = await node.request({"op": "hello", "name": "py-thermo-2"})
    assert answer["op"] == "err" and answer["code"] == "already_named", answer
    check("a name online cannot be taken; a client is named once")

    # A clean close: the node goes offline.
    await node.close()
    m = await watch.msg()
    assert m["topic"] == "$SYS/nodes/py-thermo" and m["data"]["online"] is False, m
    assert m["data"]["kind"] == "thermometer", m
    check("a closed connection turns the node offline")

    # The name is free again.
    await thief.ok({"op": "hello", "name": "py-thermo", "kind": "thermometer"})
    m = await watch.msg()
    assert m["data"]["online"] is True, m
    check("the name is free again once its holder is gone")

    # An unclean end (TCP dropped, no close frame) is noticed too: the last will.
    thief.ws.transport.abort()
    m = await watch.msg()
    assert m["topic"] == "$SYS/nodes/py-thermo" and m["data"]["online"] is False, m
    check("a dropped connection turns the node offline too (last will)")

    await watch.close()
    await late.close()


run(main)

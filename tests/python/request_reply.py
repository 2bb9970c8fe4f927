"""Request/reply as in NATS: an inbox subscription, `reply` on the request, answers published there."""

import asyncio

from bbtest import Client, check, run


async def responder(client, stop):
    """Answers every request on math/add with the sum, until `stop` is set."""
    while not stop.is_set():
        try:
            m = await client.msg(timeout=0.2)
        except asyncio.TimeoutError:
            continue
        if m["topic"] == "math/add" and "reply" in m:
            await client.send({"op": "pub", "topic": m["reply"], "data": sum(m["data"])})


async def main(url):
    adder = await Client.connect(url)
    await adder.ok({"op": "hello", "name": "py-adder", "kind": "service"})
    await adder.sub("math/add")
    stop = asyncio.Event()
    serving = asyncio.create_task(responder(adder, stop))

    asker = await Client.connect(url)
    await asker.sub("_inbox/py-asker/+")
    # Three requests in flight at once; each reply is matched by its reply topic.
    questions = {f"_inbox/py-asker/{n}": [n, n * 10, 1] for n in range(3)}
    for reply, numbers in questions.items():
        await asker.send({"op": "pub", "topic": "math/add", "data": numbers, "reply": reply})
    answers = {}
    while len(answers) < len(questions):
        m = await asker.msg()
        assert m.get("from") == "py-adder", m
        answers[m["topic"]] = m["data"]
    assert answers == {reply: sum(nums) for reply, nums in questions.items()}, answers
    check("three concurrent requests, each answered on its own reply topic")

    # A bystander on the request topic sees the `reply` field passed through untouched.
    bystander = await Client.connect(url)
    await bystander.sub("math/#")
    await asker.send({"op": "pub", "topic": "math/add", "data": [2, 2], "reply": "_inbox/py-asker/9"})
    seen = await bystander.msg()
    assert seen["reply"] == "_inbox/py-asker/9" and seen["data"] == [2, 2], seen
    assert (await asker.msg())["data"] == 4
    check("the broker passes `reply` through to every subscriber")

    # No responder: nothing comes back (the requester's own timeout decides).
    await asker.send({"op": "pub", "topic": "math/mul", "data": [2, 3], "reply": "_inbox/py-asker/10"})
    await asker.nothing(0.5)
    check("a request nobody serves times out on the requester's side")

    stop.set()
    await serving
    for c in (adder, asker, bystander):
        await c.close()


run(main)

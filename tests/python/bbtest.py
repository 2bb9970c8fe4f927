"""A small test client for the breadboard broker, built on Python's `websockets` and `msgpack`.

Nothing here comes from the breadboard code base: it speaks the protocol as PROTOCOL.md describes
it, as any third-party tool would. Every wait has a timeout, so a script can never hang.

Each test script takes the broker's URL as its only argument, prints one `ok:` line per check,
and exits 0 when everything held (non-zero with a traceback otherwise).
"""

import asyncio
import json
import sys

import msgpack
import websockets

# How long any single expected frame may take.
WAIT = 5.0
# How long to listen when checking that nothing arrives.
QUIET = 0.3


class Client:
    """One WebSocket connection speaking JSON text frames, or MessagePack binary frames."""

    def __init__(self, ws, binary):
        self.ws = ws
        self.binary = binary
        self.next_id = 0

    @classmethod
    async def connect(cls, url, binary=False):
        ws = await asyncio.wait_for(websockets.connect(url), WAIT)
        return cls(ws, binary)

    async def close(self):
        await asyncio.wait_for(self.ws.close(), WAIT)

    def new_id(self):
        self.next_id += 1
        return self.next_id

    async def send(self, frame):
        if self.binary:
            await self.ws.send(msgpack.packb(frame))
        else:
            await self.ws.send(json.dumps(frame))

    async def recv_raw(self, timeout=WAIT):
        """The next WebSocket message as it came (str for text, bytes for binary)."""
        return await asyncio.wait_for(self.ws.recv(), timeout)

    async def recv(self, timeout=WAIT):
        """The next frame, decoded from whichever encoding it came in."""
        raw = await self.recv_raw(timeout)
        return msgpack.unpackb(raw) if isinstance(raw, bytes) else json.loads(raw)

    async def nothing(self, timeout=QUIET):
        """Asserts that no frame arrives within `timeout`."""
        try:
            frame = await self.recv(timeout)
        except asyncio.TimeoutError:
            return
        raise AssertionError(f"expected silence, got {frame}")

    async def request(self, frame):
        """Sends a frame with a fresh `id`; returns (answer, frames that came before it)."""
        frame = dict(frame, id=self.new_id())
        await self.send(frame)
        before = []
        while True:
            got = await self.recv()
            if got.get("id") == frame["id"] and got.get("op") in ("ok", "err", "pong"):
                return got, before
            before.append(got)

    async def ok(self, frame):
        """Sends a frame and asserts it succeeded; returns the frames delivered before the `ok`."""
        answer, before = await self.request(frame)
        assert answer["op"] in ("ok", "pong"), f"{frame} failed: {answer}"
        return before

    async def sub(self, topic):
        """Subscribes; returns the retained messages replayed before the `ok`."""
        return await self.ok({"op": "sub", "topic": topic})

    async def pub(self, topic, data, **extra):
        """Publishes and waits for the `ok`. Messages this client gets meanwhile (its own, if it
        is subscribed) are returned, not lost."""
        return await self.ok(dict({"op": "pub", "topic": topic, "data": data}, **extra))

    async def msg(self, timeout=WAIT):
        """The next `msg` frame (answers in between are skipped)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            frame = await self.recv(max(left, 0.001))
            if frame.get("op") == "msg":
                return frame


def check(what):
    print(f"ok: {what}", flush=True)


def run(main, limit=30.0):
    """Runs `main(url)` with the URL from argv, within `limit` seconds in all."""
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} ws://HOST:PORT")
    asyncio.run(asyncio.wait_for(main(sys.argv[1]), limit))

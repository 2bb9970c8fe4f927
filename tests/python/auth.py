"""Credentials from a third-party client: Python's `websockets` sending a token in an
`Authorization` header, in the URL's query (percent-encoded), and in `hello`; wrong ones refused.

Usage: auth.py ws://HOST:PORT TOKEN. The broker's auth file gives the token's user (`py`) the right
to publish and subscribe under `py/#`, and has no `[anonymous]` section.
"""

import asyncio
import sys
from urllib.parse import quote

import websockets

from bbtest import WAIT, Client, check

try:  # websockets >= 13: the new asyncio client takes `additional_headers`
    from websockets.asyncio.client import connect as _connect

    def connect(url, headers=None):
        return _connect(url, additional_headers=headers)
except ImportError:  # older releases: the legacy client takes `extra_headers`
    def connect(url, headers=None):
        return websockets.connect(url, extra_headers=headers)


def status_of(error):
    """The HTTP status of a refused handshake, across websockets versions."""
    response = getattr(error, "response", None)
    if response is not None and hasattr(response, "status_code"):
        return response.status_code
    return getattr(error, "status_code", None)


async def open_client(url, headers=None):
    ws = await asyncio.wait_for(connect(url, headers), WAIT)
    return Client(ws, binary=False)


async def refused(url, headers=None):
    """The status with which the broker refused the upgrade; fails if it accepted it."""
    try:
        ws = await asyncio.wait_for(connect(url, headers), WAIT)
    except websockets.exceptions.InvalidStatus as e:  # websockets >= 14
        return status_of(e)
    except getattr(websockets.exceptions, "InvalidStatusCode", ()) as e:
        return status_of(e)
    await ws.close()
    raise AssertionError(f"{url} with {headers} was accepted")


async def roundtrip(c, topic):
    await c.sub("py/#")
    # Our own message may come before the `ok` of the pub, or after it.
    early = [f for f in await c.pub(topic, {"n": 1}) if f.get("op") == "msg"]
    m = early[0] if early else await c.msg()
    assert (m["topic"], m["data"]) == (topic, {"n": 1}), m


async def main(url, token):
    base = url.rstrip("/")

    c = await open_client(base + "/", {"Authorization": f"Bearer {token}"})
    await roundtrip(c, "py/header")
    answer, _ = await c.request({"op": "sub", "topic": "#"})
    assert answer["op"] == "err" and answer["code"] == "forbidden", answer
    await c.send({"op": "ping", "id": 77})
    assert await c.recv() == {"op": "pong", "id": 77}
    await c.close()
    check("Authorization: Bearer on the upgrade: allowed topics work, others are forbidden, the connection stays")

    c = await open_client(base + "/?token=" + quote(token, safe=""))
    await roundtrip(c, "py/query")
    await c.close()
    check("?token= (percent-encoded) on the URL works")

    assert await refused(base + "/", {"Authorization": "Bearer not-the-token"}) == 401
    assert await refused(base + "/?token=" + quote(token + "x", safe="")) == 401
    check("a wrong token in the header or the query: HTTP 401, no WebSocket")

    c = await open_client(base + "/")
    answer, _ = await c.request({"op": "sub", "topic": "py/#"})
    assert answer["op"] == "err" and answer["code"] == "forbidden", answer
    await c.ok({"op": "hello", "name": "py", "token": token})
    await roundtrip(c, "py/hello")
    await c.close()
    check("no credentials: forbidden until a hello with the token, then allowed")

    c = await open_client(base + "/")
    answer, _ = await c.request({"op": "hello", "name": "py", "token": "wrong"})
    assert answer["op"] == "err" and answer["code"] == "auth_failed", answer
    try:
        extra = await c.recv()
        raise AssertionError(f"a frame after auth_failed: {extra}")
    except websockets.exceptions.ConnectionClosed as e:
        code = e.rcvd.code if getattr(e, "rcvd", None) is not None else getattr(e, "code", None)
        assert code == 1008, f"closed with {code}"
    check("a wrong token in hello: auth_failed, then close 1008")


if len(sys.argv) != 3:
    sys.exit(f"usage: {sys.argv[0]} ws://HOST:PORT TOKEN")
asyncio.run(asyncio.wait_for(main(sys.argv[1], sys.argv[2]), 30.0))

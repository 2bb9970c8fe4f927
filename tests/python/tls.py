"""TLS from a third-party client: Python's `ssl` module under `websockets` and `urllib`.

Usage: tls.py wss://HOST:PORT CAFILE sha256:HEX OTHER_CAFILE

- CAFILE (the broker's own certificate) as the only trust anchor, with host name checking: the
  WebSocket works, and so does `GET /metrics` over https;
- no CA at all but the certificate's SHA-256 pinned (what nodes do with a fingerprint from mDNS):
  the fingerprint seen matches the one given, then the WebSocket works;
- the Origin check over TLS: the broker's own https:// origin in, another site's 403;
- OTHER_CAFILE (some other certificate) as the trust anchor: the handshake is refused, so the
  first check above was a real verification.
"""

import asyncio
import hashlib
import ssl
import sys
import urllib.request

import websockets

from bbtest import WAIT, Client, check

try:  # websockets >= 13
    from websockets.asyncio.client import connect
except ImportError:
    connect = websockets.connect


async def roundtrip(ws, topic):
    c = Client(ws, binary=False)
    await c.sub(topic)
    # Our own message may come before the `ok` of the pub, or after it.
    early = [f for f in await c.pub(topic, {"over": "tls"}) if f.get("op") == "msg"]
    m = early[0] if early else await c.msg()
    assert (m["topic"], m["data"]) == (topic, {"over": "tls"}), m
    await c.close()


def peer_fingerprint(ws):
    tls = ws.transport.get_extra_info("ssl_object")
    assert tls is not None, "not a TLS connection"
    return "sha256:" + hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()


async def main(url, cafile, fingerprint, other_cafile):
    https = "https://" + url.split("://", 1)[1].rstrip("/")

    verified = ssl.create_default_context(cafile=cafile)
    ws = await asyncio.wait_for(connect(url, ssl=verified), WAIT)
    assert peer_fingerprint(ws) == fingerprint, (peer_fingerprint(ws), fingerprint)
    await roundtrip(ws, "tls/ca")
    check("wss:// verified against the certificate file (host name checked too)")

    with urllib.request.urlopen(https + "/metrics", context=verified, timeout=WAIT) as r:
        body = r.read().decode()
        assert r.status == 200 and "breadboard_" in body, (r.status, body[:200])
    with urllib.request.urlopen(https + "/healthz", context=verified, timeout=WAIT) as r:
        assert r.status == 200, r.status
    check("/metrics and /healthz over https")

    pinned = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    pinned.check_hostname = False
    pinned.verify_mode = ssl.CERT_NONE
    ws = await asyncio.wait_for(connect(url, ssl=pinned), WAIT)
    seen = peer_fingerprint(ws)
    if seen != fingerprint:
        await ws.close()
        raise AssertionError(f"pinned {fingerprint}, the broker showed {seen}")
    await roundtrip(ws, "tls/pinned")
    check("wss:// with the fingerprint pinned: the same fingerprint as the start line")

    # A page served by the broker over https is its own origin; another site is not.
    ws = await asyncio.wait_for(connect(url, ssl=pinned, origin=https), WAIT)
    await ws.close()
    try:
        ws = await asyncio.wait_for(connect(url, ssl=pinned, origin="https://evil.example"), WAIT)
    except websockets.exceptions.InvalidStatus as e:
        status = e.response.status_code
    else:
        await ws.close()
        raise AssertionError("a page of another origin got a socket over wss://")
    assert status == 403, status
    check("over wss:// the broker's own https:// origin is let in, another site's gets 403")

    wrong = ssl.create_default_context(cafile=other_cafile)
    try:
        ws = await asyncio.wait_for(connect(url, ssl=wrong), WAIT)
    except ssl.SSLCertVerificationError:
        pass
    else:
        await ws.close()
        raise AssertionError("a certificate that is not the trust anchor was accepted")
    check("another certificate as the trust anchor: refused")


if len(sys.argv) != 5:
    sys.exit(f"usage: {sys.argv[0]} wss://HOST:PORT CAFILE sha256:HEX OTHER_CAFILE")
asyncio.run(asyncio.wait_for(main(*sys.argv[1:]), 30.0))

"""Drives Synapse through sluice with matrix-nio, a real Matrix client
library. Prints one JSON object of what happened (read by tests/synapse.rs).

Usage: client.py GATEWAY_URL
"""
import asyncio
import json
import sys
import time
import uuid

from nio import AsyncClient, AsyncClientConfig, RoomSendResponse


def code(r):
    return getattr(r, "status_code", None) or type(r).__name__


async def main(url):
    out = {}
    tag = uuid.uuid4().hex[:8]
    # Gives up at the first M_LIMIT_EXCEEDED, to see it.
    strict = AsyncClientConfig(max_limit_exceeded=0, max_timeouts=0)

    # Registrations from one address: the second is limited.
    a = AsyncClient(url, f"alice{tag}", config=strict)
    r = await a.register(f"alice{tag}", "correct-horse")
    out["register_1"] = type(r).__name__
    await a.close()
    b = AsyncClient(url, f"bob{tag}", config=strict)
    r = await b.register(f"bob{tag}", "battery-staple")
    out["register_2"] = {"code": code(r), "retry_after_ms": getattr(r, "retry_after_ms", None)}
    await b.close()

    # Honouring M_LIMIT_EXCEEDED: nio's default waits retry_after_ms and
    # retries, so every message gets through, just later.
    patient = AsyncClient(url, f"alice{tag}")
    r = await patient.login("correct-horse")
    out["login"] = type(r).__name__
    r = await patient.room_create(name="sluice")
    out["room_create"] = type(r).__name__
    room = getattr(r, "room_id", None)
    t0 = time.monotonic()
    sent = 0
    for i in range(6):
        r = await patient.room_send(room, "m.room.message", {"msgtype": "m.text", "body": f"m{i}"})
        if isinstance(r, RoomSendResponse):
            sent += 1
    out["sent"] = sent
    out["send_seconds"] = time.monotonic() - t0
    await patient.close()

    # A password-guessing loop from the same address.
    guesses = []
    for i in range(30):
        g = AsyncClient(url, f"alice{tag}", config=strict)
        r = await g.login(f"wrong-{i}")
        guesses.append(code(r))
        await g.close()
    out["guesses"] = guesses
    print(json.dumps(out))


asyncio.run(main(sys.argv[1]))

"""The Synapse module against a sluice that fails: unreachable, silent
(slower than timeout_s), answering garbage. Each gives on_error's answer,
within the timeout. Needs only Synapse importable (no homeserver runs).

Usage: synapse_unit.py MODULE_DIR    (exit 0 and "OK" when all hold)
"""
import asyncio
import json
import logging
import socket
import sys
import threading
import time

sys.path.insert(0, sys.argv[1])
from synapse.module_api.errors import SynapseError  # noqa: E402

import sluice_synapse  # noqa: E402

TIMEOUT = 0.3
logging.disable(logging.CRITICAL)


class FakeApi:
    """What the module uses of ModuleApi."""

    def register_spam_checker_callbacks(self, **_):
        pass

    async def defer_to_thread(self, f, *args):
        return await asyncio.get_running_loop().run_in_executor(None, f, *args)


def serve(answer: bytes) -> int:
    """A server answering every connection with `answer` (raw bytes)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()

    def run():
        while True:
            c, _ = s.accept()
            c.recv(65536)
            c.sendall(answer)
            c.close()

    threading.Thread(target=run, daemon=True).start()
    return s.getsockname()[1]


def http(status: str, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def silent() -> int:
    """Accepts connections (the kernel's backlog) and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    silent.keep = getattr(silent, "keep", []) + [s]
    return s.getsockname()[1]


def closed() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


failures = {
    "unreachable": closed(),
    "silent": silent(),
    "not JSON": serve(http("200 OK", b"<html>")),
    "allowed not a boolean": serve(http("200 OK", b'{"allowed": "yes"}')),
    "allowed missing": serve(http("200 OK", b'{"retry_after_ms": 5}')),
    "negative retry": serve(http("200 OK", b'{"allowed": false, "retry_after_ms": -1}')),
    "a 500": serve(http("500 Internal Server Error", b'{"allowed": true}')),
    "a 400": serve(http("400 Bad Request", b'{"error": "x"}')),
    "too long": serve(http("200 OK", b'{"allowed": true, "x": "' + b"a" * 70000 + b'"}')),
    "garbage": serve(b"\x00\x01 not http\r\n\r\n"),
}


async def main():
    bad = []
    for name, port in failures.items():
        for on_error in ("allow", "deny"):
            m = sluice_synapse.SluiceModule(
                {"url": f"http://127.0.0.1:{port}", "timeout_s": TIMEOUT, "on_error": on_error}, FakeApi()
            )
            t0 = time.monotonic()
            try:
                await m._refuse("registration", {"ip": "203.0.113.7"})
                got = "allowed"
            except SynapseError as e:
                d = json.loads(json.dumps(e.error_dict(None)))  # as the client reads it
                got = f"{e.code} {d['errcode']} {d.get('retry_after_ms')}"
            took = time.monotonic() - t0
            want = "allowed" if on_error == "allow" else "429 M_LIMIT_EXCEEDED 1000"
            if got != want or took > TIMEOUT * 3:
                bad.append(f"{name}, on_error {on_error}: {got} after {took:.2f}s (want {want})")
    # A real decision still reaches the client as is.
    port = serve(http("200 OK", b'{"allowed": false, "retry_after_ms": 1234, "limit": "x"}'))
    m = sluice_synapse.SluiceModule({"url": f"http://127.0.0.1:{port}", "on_error": "allow"}, FakeApi())
    try:
        await m._refuse("join", {"user": "@a:b"})
        bad.append("a denial was allowed")
    except SynapseError as e:
        d = json.loads(json.dumps(e.error_dict(None)))  # as the client reads it
        if (e.code, d["errcode"], d.get("retry_after_ms"), e.headers) != (
                429, "M_LIMIT_EXCEEDED", 1234, {"Retry-After": "2"}):
            bad.append(f"denial answered {e.code} {e.errcode} {e.error_dict(None)} {e.headers}")
    # on_error per action: unknown actions and values are config errors.
    for conf in ({"on_error": "maybe"}, {"on_error": {"registraton": "deny"}}, {"on_error": 3}):
        try:
            sluice_synapse.SluiceModule.parse_config(conf)
            bad.append(f"accepted {conf}")
        except Exception as e:  # noqa: BLE001
            if type(e).__name__ != "ConfigError":
                bad.append(f"{conf}: {e!r}")
    if bad:
        print("\n".join(bad))
        sys.exit(1)
    print("OK")


asyncio.run(main())

# A real XMPP client (slixmpp) logging in through the gateway from a chosen
# source address. Usage: client.py HOST PORT JID PASSWORD SOURCE_IP
# Exit 0 and "SESSION OK" once a session is established.
import asyncio, sys
import slixmpp
host, port, jid, pw, src = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]

class C(slixmpp.ClientXMPP):
    def __init__(self):
        super().__init__(jid, pw)
        self.ok = False
        self.add_event_handler("session_start", self.start)
        self.add_event_handler("failed_auth", self.failed)
    async def start(self, _):
        self.send_presence()
        await self.get_roster()
        self.ok = True
        print("SESSION OK", self.boundjid.full, flush=True)
        self.disconnect()
    def failed(self, _):
        print("AUTH FAILED", flush=True)
        self.disconnect()

async def main():
    loop = asyncio.get_running_loop()
    orig = loop.create_connection
    async def from_src(*a, **k):
        k.setdefault("local_addr", (src, 0))
        return await orig(*a, **k)
    loop.create_connection = from_src
    c = C()
    c.enable_starttls = False
    c.enable_direct_tls = False
    c.enable_plaintext = True
    c.plugin['feature_mechanisms'].unencrypted_plain = True
    c.plugin['feature_mechanisms'].unencrypted_scram = True
    c.connect(host, port)
    await asyncio.wait_for(c.disconnected, 20)
    sys.exit(0 if c.ok else 1)

asyncio.run(main())

"""A minimal XMPP client (plain TCP, as the test's Prosody allows) from a
chosen source address, printing one JSON object of what the server answered
(read by tests/modules.rs). Raw stanzas, so the test sees the error exactly
as any client library would get it.

Usage: xmpp_client.py PORT SOURCE_IP register USER PASSWORD
       xmpp_client.py PORT SOURCE_IP login USER PASSWORD
"""
import base64
import json
import socket
import sys
import xml.etree.ElementTree as ET

port, src, what, user, pw = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
STREAMS = "{urn:ietf:params:xml:ns:xmpp-stanzas}"
SASL = "{urn:ietf:params:xml:ns:xmpp-sasl}"

s = socket.create_connection(("127.0.0.1", port), timeout=20, source_address=(src, 0))
parser = ET.XMLPullParser(events=("start", "end"))
depth = 0


def send(text):
    s.sendall(text.encode())


def next_top_level():
    """The next complete child of the stream."""
    global depth
    while True:
        for ev, el in parser.read_events():
            if ev == "start":
                depth += 1
            else:
                depth -= 1
                if depth == 1:
                    return el
        data = s.recv(65536)
        if not data:
            raise SystemExit(json.dumps({"closed": True}))
        parser.feed(data)


def error_of(el, ns):
    """type, condition and text of a stanza error (or a SASL failure)."""
    err = el.find(f"{ns}error") if ns == "{jabber:client}" else el
    out = {"type": err.get("type")} if ns == "{jabber:client}" and err is not None else {}
    for c in list(err if err is not None else []):
        tag = c.tag.split("}")[1]
        if tag == "text":
            out["text"] = c.text
        else:
            out["condition"] = tag
    return out


send("<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
     "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
features = next_top_level()
if what == "register":
    send(f"<iq type='set' id='reg1'><query xmlns='jabber:iq:register'><username>{user}</username>"
         f"<password>{pw}</password></query></iq>")
    iq = next_top_level()
    out = {"ok": iq.get("type") == "result"}
    if not out["ok"]:
        out.update(error_of(iq, "{jabber:client}"))
else:
    token = base64.b64encode(f"\0{user}\0{pw}".encode()).decode()
    send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
    el = next_top_level()
    out = {"ok": el.tag == f"{SASL}success"}
    if not out["ok"]:
        out.update(error_of(el, SASL))
send("</stream:stream>")
s.close()
print(json.dumps(out))

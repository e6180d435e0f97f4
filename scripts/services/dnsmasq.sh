# dnsmasq from Debian: a real DNS server with SRV records for the outgoing
# relay's resolution tests (RFC 6120 §3.2: _xmpp-server._tcp SRV, then
# A/AAAA). Tests start it themselves on a free loopback port with their own
# records; this only provides the binary.
need_pkgs dnsmasq-base
export SLUICE_TEST_DNSMASQ=/usr/sbin/dnsmasq
"$SLUICE_TEST_DNSMASQ" --version | head -n 1 >&2

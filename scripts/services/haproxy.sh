# HAProxy from Debian: the real PROXY protocol v1/v2 sender (and receiver)
# for the TCP gateway's tests and benchmark. Tests write their own config
# and start haproxy themselves on free ports; this only provides the binary.
need_pkgs haproxy
export SLUICE_TEST_HAPROXY=/usr/sbin/haproxy
"$SLUICE_TEST_HAPROXY" -v | head -n 1 >&2

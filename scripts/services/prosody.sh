# Prosody (Debian) as a real XMPP server behind the TCP gateway, and
# slixmpp (PyPI, in a venv under target/) as a real XMPP client. The test
# writes its own Prosody config and starts it on free ports.
need_pkgs prosody lua-bitop
export SLUICE_TEST_PROSODY=/usr/bin/prosody
venv=target/xmpp-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import slixmpp' 2>/dev/null; then
  log "installing slixmpp into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'slixmpp>=1.8,<2'
fi
export SLUICE_TEST_XMPP_PYTHON="$PWD/$venv/bin/python"

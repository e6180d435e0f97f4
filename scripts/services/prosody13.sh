# Prosody 13 and prosody-modules (with mod_net_proxy) from Debian 12
# backports, for the two-server federation test through sluice's outgoing
# relay (Prosody's s2sout-pre-connect event: 0.12.4 and later; Debian 12's
# own Prosody is 0.12.3). Adds the backports source when it is missing.
if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  log "adding bookworm-backports"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "deb http://deb.debian.org/debian bookworm-backports main" | $sudo tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
fi
if ! dpkg-query -W -f='${Version}' prosody 2>/dev/null | grep -q '^13'; then
  log "installing prosody 13 and prosody-modules from bookworm-backports"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    -t bookworm-backports prosody prosody-modules lua-bitop >/dev/null
fi
export SLUICE_TEST_PROSODY13=/usr/bin/prosody
export SLUICE_TEST_PROSODY_MODULES=/usr/share/prosody-modules

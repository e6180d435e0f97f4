# Synapse (from PyPI, SQLite) for the HTTP gateway's end-to-end test, with
# matrix-nio as the client library (sourced by scripts/test).
#
# Installs both into a venv under target/ (kept between runs; the install is
# bounded), generates a config with open registration and Synapse's own rate
# limits relaxed (sluice is the one limiting), starts it on a free loopback
# port (client and federation resources), and exports SLUICE_TEST_SYNAPSE_URL,
# SLUICE_TEST_SYNAPSE_CONFIG and SLUICE_TEST_SYNAPSE_PYTHON (the latter as soon
# as the venv is installed: the module tests start their own Synapse).
# If the install or start fails, nothing is exported: the test then fails
# under SLUICE_TEST_STRICT=1 with that reason, and the rest still runs.
synapse_venv="$PWD/target/synapse-venv"
synapse_pins="matrix-synapse==1.163.2 matrix-nio==0.26.0"
synapse_ok=1
if ! "$synapse_venv/bin/python" -c 'import synapse, nio' 2>/dev/null; then
  log "installing $synapse_pins into $synapse_venv"
  python3 -m venv "$synapse_venv" 2>/dev/null || { need_pkgs python3-venv && python3 -m venv "$synapse_venv"; } || synapse_ok=0
  if [ "$synapse_ok" = 1 ]; then
    timeout 600 "$synapse_venv/bin/pip" install -q --disable-pip-version-check $synapse_pins >&2 || synapse_ok=0
  fi
fi
if [ "$synapse_ok" = 1 ]; then
  # The venv alone serves tests that start their own Synapse
  # (crates/sluice-server/tests/modules.rs, with the sluice module loaded).
  export SLUICE_TEST_SYNAPSE_PYTHON="$synapse_venv/bin/python"
  synapse_dir=$(mktemp -d)
  synapse_port=$(free_port)
  (cd "$synapse_dir" && timeout 120 "$synapse_venv/bin/python" -m synapse.app.homeserver \
    --server-name localhost --config-path homeserver.yaml --generate-config --report-stats=no >/dev/null) || synapse_ok=0
fi
if [ "$synapse_ok" = 1 ]; then
  # Overrides of the generated config, merged by Synapse's own YAML library.
  SYNAPSE_DIR="$synapse_dir" SYNAPSE_PORT="$synapse_port" "$synapse_venv/bin/python" - <<'PY' || synapse_ok=0
import os, yaml
d, port = os.environ["SYNAPSE_DIR"], int(os.environ["SYNAPSE_PORT"])
path = os.path.join(d, "homeserver.yaml")
c = yaml.safe_load(open(path))
fast = {"per_second": 1000, "burst_count": 1000}
c.update({
    "listeners": [{"port": port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
                   "x_forwarded": True, "resources": [{"names": ["client", "federation"], "compress": False}]}],
    "database": {"name": "sqlite3", "args": {"database": os.path.join(d, "homeserver.db")}},
    "enable_registration": True,
    "enable_registration_without_verification": True,
    "suppress_key_server_warning": True,
    "trusted_key_servers": [],
    "log_config": None,
    # sluice is the one limiting: Synapse's own limits out of the way.
    "rc_message": fast, "rc_registration": fast,
    "rc_login": {"address": fast, "account": fast, "failed_attempts": fast},
    "rc_joins": {"local": fast, "remote": fast},
    "rc_invites": {"per_room": fast, "per_user": fast, "per_issuer": fast},
})
yaml.safe_dump(c, open(path, "w"))
PY
fi
if [ "$synapse_ok" = 1 ]; then
  (cd "$synapse_dir" && exec "$synapse_venv/bin/python" -m synapse.app.homeserver -c homeserver.yaml) \
    >"$synapse_dir/synapse.log" 2>&1 &
  synapse_pid=$!
  on_exit "kill $synapse_pid 2>/dev/null; wait $synapse_pid 2>/dev/null; rm -rf '$synapse_dir'"
  # Bounded: Synapse creates its database on first start (about 10 s here).
  if wait_port "$synapse_port" 900; then
    export SLUICE_TEST_SYNAPSE_URL="http://127.0.0.1:$synapse_port"
    # The route test reads Synapse's own servlet registrations with this config.
    export SLUICE_TEST_SYNAPSE_CONFIG="$synapse_dir/homeserver.yaml"
    log "synapse on $SLUICE_TEST_SYNAPSE_URL"
  else
    tail -20 "$synapse_dir/synapse.log" >&2
  fi
else
  log "synapse: install or config generation failed; its end-to-end test will fail under SLUICE_TEST_STRICT"
fi

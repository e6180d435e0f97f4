"""Starts Synapse with examples/synapse/sluice_synapse.py loaded (read by
tests/modules.rs).

Usage: start_synapse.py DIR PORT SLUICE_URL MODULE_DIR

Generates a config in DIR (SQLite, open registration, Synapse's own rate
limits out of the way so that sluice is the one limiting, `x_forwarded` so
that a test sets the client address), then runs the homeserver in this
process (exec), logging to DIR/synapse.log.
"""
import os
import subprocess
import sys

import yaml

d, port, sluice, module_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
path = os.path.join(d, "homeserver.yaml")
subprocess.run(
    [sys.executable, "-m", "synapse.app.homeserver", "--server-name", "localhost",
     "--config-path", path, "--generate-config", "--report-stats=no"],
    cwd=d, check=True, stdout=subprocess.DEVNULL, timeout=120,
)
c = yaml.safe_load(open(path))
fast = {"per_second": 1000, "burst_count": 1000}
c.update({
    "listeners": [{"port": port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
                   "x_forwarded": True, "resources": [{"names": ["client"], "compress": False}]}],
    "database": {"name": "sqlite3", "args": {"database": os.path.join(d, "homeserver.db")}},
    "enable_registration": True,
    "enable_registration_without_verification": True,
    "suppress_key_server_warning": True,
    "trusted_key_servers": [],
    "log_config": None,
    "rc_message": fast, "rc_registration": fast,
    "rc_login": {"address": fast, "account": fast, "failed_attempts": fast},
    "rc_joins": {"local": fast, "remote": fast},
    "rc_invites": {"per_room": fast, "per_user": fast, "per_issuer": fast},
    "modules": [{"module": "sluice_synapse.SluiceModule", "config": {
        "url": sluice,
        "timeout_s": 2,
        # Registrations closed while sluice is down, everything else open:
        # both answers of on_error from one Synapse.
        "on_error": {"default": "allow", "registration": "deny"},
    }}],
})
yaml.safe_dump(c, open(path, "w"))
env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [module_dir, os.environ.get("PYTHONPATH")])))
os.chdir(d)
log = os.open(os.path.join(d, "synapse.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
os.dup2(log, 1)
os.dup2(log, 2)
os.execve(sys.executable, [sys.executable, "-m", "synapse.app.homeserver", "-c", path], env)

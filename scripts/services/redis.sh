# Redis for sluice-redis' tests (sourced by scripts/test).
#
# Installs redis-server from Debian if missing, starts it on a free loopback
# port with nothing on disk, exports SLUICE_TEST_REDIS_URL, and stops it at
# exit. Tests that need their own server (outage tests kill and restart it)
# find redis-server on PATH.
need_pkgs redis-server redis-tools
redis_port=$(free_port)
redis_dir=$(mktemp -d)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$redis_dir" --daemonize no --loglevel warning --logfile "$redis_dir/redis.log" &
redis_pid=$!
on_exit "kill $redis_pid 2>/dev/null; wait $redis_pid 2>/dev/null; rm -rf '$redis_dir'"
wait_port "$redis_port"
export SLUICE_TEST_REDIS_URL="redis://127.0.0.1:$redis_port"
log "redis on $SLUICE_TEST_REDIS_URL"

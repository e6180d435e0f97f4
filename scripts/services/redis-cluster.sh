# A three-node Redis Cluster for sluice-redis' Cluster tests (sourced by
# scripts/test, after redis.sh).
#
# Starts three `redis-server --cluster-enabled yes` nodes on free loopback
# ports (client and bus port both chosen free), nothing on disk but their
# node tables in a temporary directory, joins them with
# `redis-cli --cluster create` (three primaries, no replicas), waits (bounded)
# until every node reports `cluster_state:ok`, exports
# SLUICE_TEST_REDIS_CLUSTER_URLS (comma-separated redis:// URLs, one per node),
# and stops the nodes at exit.
need_pkgs redis-server redis-tools
rc_dir=$(mktemp -d)
rc_ports=()
rc_pids=()
for n in 1 2 3; do
  p=$(free_port)
  bus=$(free_port)
  redis-server --port "$p" --cluster-port "$bus" --bind 127.0.0.1 \
    --cluster-enabled yes --cluster-config-file "$rc_dir/nodes-$n.conf" \
    --cluster-node-timeout 2000 --save "" --appendonly no \
    --dir "$rc_dir" --daemonize no --loglevel warning --logfile "$rc_dir/redis-$n.log" &
  rc_pids+=("$!")
  rc_ports+=("$p")
done
on_exit "kill ${rc_pids[*]} 2>/dev/null; wait ${rc_pids[*]} 2>/dev/null; rm -rf '$rc_dir'"
for p in "${rc_ports[@]}"; do wait_port "$p"; done
redis-cli --cluster create "127.0.0.1:${rc_ports[0]}" "127.0.0.1:${rc_ports[1]}" \
  "127.0.0.1:${rc_ports[2]}" --cluster-replicas 0 --cluster-yes >"$rc_dir/create.log" 2>&1 || {
  cat "$rc_dir/create.log" >&2
  log "redis-cli --cluster create failed"
  return 1
}
# Every node must agree the cluster is up (slots all assigned, gossip done).
rc_ok=0
for ((i = 0; i < 100; i++)); do
  rc_ok=1
  for p in "${rc_ports[@]}"; do
    redis-cli -p "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || rc_ok=0
  done
  [ "$rc_ok" -eq 1 ] && break
  sleep 0.1
done
if [ "$rc_ok" -ne 1 ]; then
  log "redis cluster did not reach cluster_state:ok within 10 s"
  return 1
fi
SLUICE_TEST_REDIS_CLUSTER_URLS=$(printf 'redis://127.0.0.1:%s,' "${rc_ports[@]}")
export SLUICE_TEST_REDIS_CLUSTER_URLS=${SLUICE_TEST_REDIS_CLUSTER_URLS%,}
log "redis cluster on $SLUICE_TEST_REDIS_CLUSTER_URLS"

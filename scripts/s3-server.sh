#!/usr/bin/env bash
# A real S3-compatible server for paraserve's tests and experiments: Debian's OpenStack Swift
# (one node, one replica, loopback only) with its s3api and tempauth middlewares and a private
# memcached. It exists so `s3://` sources are tested against a real server rather than a mock,
# on a plain Debian machine without Docker or systemd.
#
#   scripts/s3-server.sh start    install the packages when missing (root), write the config,
#                                 start the servers, wait until an authenticated request works
#   scripts/s3-server.sh stop     stop the servers this script started (by recorded PIDs)
#   scripts/s3-server.sh status   print each server's state; exit 0 only when all run
#   scripts/s3-server.sh check    exit 0 when the packages are installed
#
# Endpoint http://127.0.0.1:$PARASERVE_S3_PORT (default 9080; paraserve's gateway uses 8080),
# region us-east-1, path-style addressing, access key test:tester, secret key testing. Other
# loopback ports: PARASERVE_S3_BACKEND_PORT (default 6210) and the next two for Swift's object,
# container and account servers, PARASERVE_S3_MEMCACHED_PORT (default 11219).
# State (config, rings, data, logs, PIDs) lives in $PARASERVE_S3_DIR (default
# /var/lib/paraserve-s3 as root, ~/.local/state/paraserve-s3 otherwise).
set -euo pipefail

# Debian's python3 must run Swift: a python3 earlier on PATH (pyenv, venv) cannot import it.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH

PORT=${PARASERVE_S3_PORT:-9080}
MEMCACHED_PORT=${PARASERVE_S3_MEMCACHED_PORT:-11219}
# The object, container and account servers listen on three ports from this base.
BACKEND_PORT=${PARASERVE_S3_BACKEND_PORT:-6210}
OBJECT_PORT=$BACKEND_PORT
CONTAINER_PORT=$((BACKEND_PORT + 1))
ACCOUNT_PORT=$((BACKEND_PORT + 2))
if [ "$(id -u)" -eq 0 ]; then
  DIR=${PARASERVE_S3_DIR:-/var/lib/paraserve-s3}
  RUN_AS=root
else
  DIR=${PARASERVE_S3_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/paraserve-s3}
  RUN_AS=$(id -un)
fi
CONF=$DIR/conf
DEVICES=$DIR/devices
PACKAGES=(swift swift-proxy swift-account swift-container swift-object memcached curl)
SERVERS=(memcached account container object proxy)
START_TIMEOUT_S=${PARASERVE_S3_START_TIMEOUT_S:-60}

say() { echo "s3-server: $*" >&2; }
fail() { say "$*"; exit 1; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# A process that exited but was not reaped yet (a zombie) counts as gone: where PID 1 is not
# an init that reaps orphans promptly, it lingers after its exit.
alive() {
  local state
  state=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}
running() { [ -f "$DIR/$1.pid" ] && alive "$(cat "$DIR/$1.pid")"; }

missing_packages() {
  local p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}

install_packages() {
  local missing
  mapfile -t missing < <(missing_packages)
  [ "${#missing[@]}" -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || fail "not root: cannot install ${missing[*]} (run scripts/setup-debian.sh)"
  say "installing ${missing[*]}"
  # The packages' maintainer scripts would start the stock services (a proxy on 8080, a
  # memcached on 11211); a policy-rc.d that answers 101 forbids that for this install only.
  local policy=/usr/sbin/policy-rc.d saved=''
  if [ -e "$policy" ]; then saved=$(mktemp); cp -p "$policy" "$saved"; fi
  # shellcheck disable=SC2064
  trap "if [ -n '$saved' ]; then mv '$saved' '$policy'; else rm -f '$policy'; fi" EXIT
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  local log; log=$(mktemp)
  if ! { DEBIAN_FRONTEND=noninteractive apt-get update -q &&
         DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    tail -30 "$log" >&2
    fail "apt-get failed"
  fi
  rm -f "$log"
  if [ -n "$saved" ]; then mv "$saved" "$policy"; else rm -f "$policy"; fi
  trap - EXIT
}

server_conf() {
  local kind=$1 port=$2
  cat >"$CONF/$kind-server.conf" <<EOF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $port
workers = 0
user = $RUN_AS
swift_dir = $CONF
devices = $DEVICES
mount_check = false
log_name = paraserve-s3-$kind
[pipeline:main]
pipeline = healthcheck $kind-server
[app:$kind-server]
use = egg:swift#$kind
[filter:healthcheck]
use = egg:swift#healthcheck
EOF
}

write_config() {
  mkdir -p "$CONF" "$DEVICES/d1"
  # Swift reads its hash settings from this fixed path whatever swift_dir says; the package
  # ships the file, so it is written only when someone removed it.
  if [ ! -f /etc/swift/swift.conf ]; then
    [ -w /etc ] || fail "/etc/swift/swift.conf is missing and cannot be written"
    mkdir -p /etc/swift
    printf '[swift-hash]\nswift_hash_path_suffix = paraserve\nswift_hash_path_prefix = paraserve\n[storage-policy:0]\nname = Policy-0\ndefault = yes\n' \
      >/etc/swift/swift.conf
  fi
  server_conf account "$ACCOUNT_PORT"
  server_conf container "$CONTAINER_PORT"
  server_conf object "$OBJECT_PORT"
  # One ring per server kind with one device; built in a single Python process because nine
  # swift-ring-builder invocations take several seconds.
  # The rings name the servers' ports, so they are rebuilt when those change.
  if [ "$(cat "$CONF/rings.ports" 2>/dev/null)" != "$OBJECT_PORT $CONTAINER_PORT $ACCOUNT_PORT" ]; then
    /usr/bin/python3 - "$CONF" "$ACCOUNT_PORT" "$CONTAINER_PORT" "$OBJECT_PORT" <<'PY'
import sys
from swift.common.ring import RingBuilder
conf = sys.argv[1]
for kind, port in zip(('account', 'container', 'object'), map(int, sys.argv[2:5])):
    builder = RingBuilder(6, 1, 1)
    builder.add_dev({'region': 1, 'zone': 1, 'ip': '127.0.0.1', 'port': port,
                     'replication_ip': '127.0.0.1', 'replication_port': port,
                     'device': 'd1', 'weight': 1.0, 'meta': ''})
    builder.rebalance()
    builder.get_ring().save(f'{conf}/{kind}.ring.gz')
    builder.save(f'{conf}/{kind}.builder')
PY
    echo "$OBJECT_PORT $CONTAINER_PORT $ACCOUNT_PORT" >"$CONF/rings.ports"
  fi
  cat >"$CONF/proxy-server.conf" <<EOF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $PORT
workers = 0
user = $RUN_AS
swift_dir = $CONF
log_name = paraserve-s3-proxy
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk s3api tempauth copy slo dlo versioned_writes proxy-logging proxy-server
[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
[filter:s3api]
use = egg:swift#s3api
location = us-east-1
[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = testing .admin
[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:$MEMCACHED_PORT
[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:bulk]
use = egg:swift#bulk
[filter:copy]
use = egg:swift#copy
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
[filter:versioned_writes]
use = egg:swift#versioned_writes
EOF
}

# spawn NAME PORT COMMAND...: runs COMMAND in its own session, logs to NAME.log, records its PID.
spawn() {
  local name=$1 port=$2
  shift 2
  running "$name" && return 0
  listening "$port" && fail "127.0.0.1:$port is in use by a process this script did not start"
  setsid "$@" >"$DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$DIR/$name.pid"
}

port_of() {
  case $1 in
    memcached) echo "$MEMCACHED_PORT" ;;
    account) echo "$ACCOUNT_PORT" ;;
    container) echo "$CONTAINER_PORT" ;;
    object) echo "$OBJECT_PORT" ;;
    proxy) echo "$PORT" ;;
  esac
}

give_up() {
  say "$1; last lines of $2.log:"
  tail -30 "$DIR/$2.log" >&2 || true
  exit 1
}

wait_ready() {
  local deadline=$((SECONDS + START_TIMEOUT_S)) name port token
  for name in account container object proxy; do
    port=$(port_of "$name")
    until curl -fsS -m 2 -o /dev/null "http://127.0.0.1:$port/healthcheck" 2>/dev/null; do
      running "$name" || give_up "$name exited" "$name"
      [ "$SECONDS" -lt "$deadline" ] || give_up "$name not healthy after ${START_TIMEOUT_S}s" "$name"
      sleep 0.1
    done
  done
  # Healthy servers are not enough: tempauth needs memcached, and the account must be
  # creatable through the proxy, before an S3 client can succeed.
  until token=$(curl -fsS -m 5 -o /dev/null -D - -H 'X-Auth-User: test:tester' -H 'X-Auth-Key: testing' \
                  "http://127.0.0.1:$PORT/auth/v1.0" 2>/dev/null | tr -d '\r' |
                  awk -F': ' 'tolower($1) == "x-auth-token" { print $2 }') &&
        [ -n "$token" ] &&
        curl -fsS -m 5 -o /dev/null -H "X-Auth-Token: $token" "http://127.0.0.1:$PORT/v1/AUTH_test" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || give_up "no authenticated request succeeded after ${START_TIMEOUT_S}s" proxy
    sleep 0.1
  done
}

start() {
  install_packages
  mkdir -p "$DIR"
  write_config
  spawn memcached "$MEMCACHED_PORT" memcached -u "$RUN_AS" -l 127.0.0.1 -p "$MEMCACHED_PORT" -U 0 -m 64
  spawn account "$ACCOUNT_PORT" swift-account-server "$CONF/account-server.conf" -v
  spawn container "$CONTAINER_PORT" swift-container-server "$CONF/container-server.conf" -v
  spawn object "$OBJECT_PORT" swift-object-server "$CONF/object-server.conf" -v
  spawn proxy "$PORT" swift-proxy-server "$CONF/proxy-server.conf" -v
  wait_ready
  say "ready: http://127.0.0.1:$PORT (access key test:tester, secret testing)"
}

stop() {
  local name pid i
  for name in proxy object container account memcached; do
    [ -f "$DIR/$name.pid" ] || continue
    pid=$(cat "$DIR/$name.pid")
    if alive "$pid"; then
      kill "$pid" 2>/dev/null || true
      for ((i = 0; i < 100; i++)); do alive "$pid" || break; sleep 0.05; done
      if alive "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi
    fi
    rm -f "$DIR/$name.pid"
  done
}

status() {
  local name all=0
  for name in "${SERVERS[@]}"; do
    if running "$name"; then echo "$name running (pid $(cat "$DIR/$name.pid"))"; else echo "$name stopped"; all=1; fi
  done
  return "$all"
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  check) [ -z "$(missing_packages)" ] ;;
  *) echo "usage: $0 start|stop|status|check" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# SPDK's own JSON-RPC client (`spdk-rpc`, which is SPDK's scripts/rpc.py, from the `spdk`
# package on PyPI, in a virtualenv) against `baton target`: every SPDK-named nvmf, log
# and discovery method baton has, with rpc.py's own argument spelling, beside the same
# calls through `baton rpc`. Fails on the first call either client gets an error for, or on
# a result that does not have SPDK's shape. Run by ci/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${SPDK_VENV:-/tmp/baton-spdk-venv}
WORK=$(mktemp -d /tmp/baton-spdk-rpc.XXXXXX)
SOCK=$WORK/rpc.sock
T0=$(date +%s)

if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  else
    echo "spdk-rpc: please install python3-venv" >&2
    exit 1
  fi
fi
if [ ! -x "$VENV/bin/spdk-rpc" ]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "spdk==${SPDK_PY_VERSION:-26.9}"
fi
RPC=("$VENV/bin/spdk-rpc" -s "$SOCK" -t 30)

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
cargo build --release -q --bin baton
BATON=$CARGO_TARGET_DIR/release/baton

"$BATON" target -m 0x1 -r "$SOCK" > "$WORK/target.log" 2>&1 &
PID=$!
cleanup() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
for _ in $(seq 600); do [ -S "$SOCK" ] && break; sleep 0.05; done
[ -S "$SOCK" ] || { echo "spdk-rpc: no RPC socket"; cat "$WORK/target.log"; exit 1; }

# Calls are counted in a file: most run inside $(...), a subshell.
spdk() { echo >> "$WORK/calls"; echo "== spdk-rpc $*" >&2; "${RPC[@]}" "$@"; }
brpc() { echo >> "$WORK/calls"; echo "== baton rpc $*" >&2; "$BATON" rpc -s "$SOCK" "$@"; }
# `expect JSON PY-EXPR`: the expression over `r` (the parsed result) must hold.
expect() { python3 -c 'import json,sys; r=json.loads(sys.argv[1]); assert eval(sys.argv[2]), (sys.argv[2], r)' "$1" "$2"; }

NQN=nqn.2016-06.io.spdk:cnode1
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

expect "$(spdk spdk_get_version)" 'r["version"].startswith("baton")'
spdk bdev_malloc_create -b Malloc0 32 512 >/dev/null
truncate -s 4M "$WORK/aio.img"
[ "$(spdk bdev_aio_create "$WORK/aio.img" Aio0 512)" = Aio0 ]
expect "$(spdk bdev_get_bdevs -b Aio0)" 'r[0]["num_blocks"] == 8192 and r[0]["product_name"] == "AIO disk"'
spdk bdev_aio_delete Aio0 >/dev/null
spdk nvmf_create_transport -t TCP -i 1048576 >/dev/null
expect "$(spdk nvmf_get_transports)" 'r[0]["max_io_size"] == 1048576'
spdk nvmf_create_subsystem "$NQN" -a -s SPDK00000000000001 -d "baton spdk-rpc" >/dev/null
spdk nvmf_subsystem_add_ns "$NQN" Malloc0 >/dev/null
spdk nvmf_subsystem_add_listener "$NQN" -t tcp -a 127.0.0.1 -s "$PORT" -f ipv4 >/dev/null
expect "$(spdk nvmf_subsystem_get_listeners "$NQN")" \
  "r == [{'address': {'trtype': 'TCP', 'adrfam': 'IPv4', 'traddr': '127.0.0.1', 'trsvcid': '$PORT'}, 'ana_states': [{'ana_group': 1, 'ana_state': 'optimized'}]}]"
expect "$(brpc nvmf_subsystem_get_listeners --nqn "$NQN")" "r[0]['address']['trsvcid'] == '$PORT'"
expect "$(spdk nvmf_subsystem_get_controllers "$NQN")" 'r == []'
# The host bdev, attached to this same process's subsystem over loopback: one bdev per
# namespace (Nvme0n1), a failover path, save_config, detach.
spdk bdev_nvme_attach_controller -b Nvme0 -t tcp -a 127.0.0.1 -s "$PORT" -f ipv4 -n "$NQN" -l 10 -o 1 >/dev/null
expect "$(spdk bdev_get_bdevs -b Nvme0n1)" "r[0]['num_blocks'] == 65536 and r[0]['driver_specific']['nvme_tcp_host']['ctrlr_name'] == 'Nvme0'"
expect "$(spdk bdev_nvme_get_controllers -n Nvme0)" "r[0]['ctrlrs'][0]['state'] == 'enabled' and r[0]['ctrlrs'][0]['trid']['subnqn'] == '$NQN'"
expect "$(brpc nvmf_subsystem_get_controllers --nqn "$NQN")" 'len(r) == 1'
spdk bdev_nvme_attach_controller -b Nvme0 -t tcp -a 127.0.0.2 -s "$PORT" -f ipv4 -n "$NQN" -x failover >/dev/null
expect "$(spdk bdev_nvme_get_controllers)" "r[0]['ctrlrs'][0]['alternate_trids'][0]['traddr'] == '127.0.0.2'"
expect "$(spdk save_config)" \
  "sum(1 for s in r['subsystems'] if s['subsystem'] == 'bdev' for c in s['config'] if c['method'] == 'bdev_nvme_attach_controller') == 2"
spdk bdev_nvme_detach_controller Nvme0 -t tcp -a 127.0.0.2 -s "$PORT" -f ipv4 >/dev/null
spdk bdev_nvme_detach_controller Nvme0 >/dev/null
expect "$(spdk bdev_nvme_get_controllers)" 'r == []'
expect "$(brpc nvmf_subsystem_get_controllers --nqn "$NQN")" 'r == []'
expect "$(spdk nvmf_subsystem_get_qpairs "$NQN")" 'r == []'
spdk nvmf_discovery_add_referral -t tcp -a 192.0.2.10 -s 4420 -f ipv4 >/dev/null
spdk nvmf_discovery_add_referral -t tcp -a 192.0.2.11 -s 4420 -n "$NQN" >/dev/null
expect "$(spdk nvmf_discovery_get_referrals)" \
  "[x['address']['traddr'] for x in r] == ['192.0.2.10', '192.0.2.11'] and r[1]['subnqn'] == '$NQN'"
expect "$(spdk save_config)" \
  "sum(1 for s in r['subsystems'] if s['subsystem'] == 'nvmf' for c in s['config'] if c['method'] == 'nvmf_discovery_add_referral') == 2"
spdk nvmf_discovery_remove_referral -t tcp -a 192.0.2.11 -s 4420 -n "$NQN" >/dev/null
spdk nvmf_discovery_remove_referral -t tcp -a 192.0.2.10 -s 4420 >/dev/null
expect "$(spdk nvmf_discovery_get_referrals)" 'r == []'
if spdk nvmf_discovery_remove_referral -t tcp -a 192.0.2.10 -s 4420 >/dev/null 2>&1; then
  echo "spdk-rpc: removing a missing referral succeeded" >&2; exit 1
fi
spdk log_set_level DEBUG >/dev/null
expect "$(spdk log_get_level)" 'r == "DEBUG"'
spdk log_set_print_level NOTICE >/dev/null
expect "$(spdk log_get_print_level)" 'r == "NOTICE"'
expect "$(brpc log_get_level)" 'r == "NOTICE"'
expect "$(spdk nvmf_get_subsystems)" "any(s['nqn'] == '$NQN' and s['namespaces'][0]['bdev_name'] == 'Malloc0' for s in r)"
expect "$(spdk nvmf_get_stats)" '"poll_groups" in r'
spdk nvmf_subsystem_remove_listener "$NQN" -t tcp -a 127.0.0.1 -s "$PORT" -f ipv4 >/dev/null
expect "$(spdk nvmf_subsystem_get_listeners "$NQN")" 'r == []'
# In-band authentication: a DH-HMAC-CHAP key in SPDK's file keyring, named by a host entry
# (rpc.py's --dhchap-key), kept by save_config; key bytes are never listed.
HNQN=nqn.2014-08.org.nvmexpress:uuid:spdk-rpc-host
echo "DHHC-1:01:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:" > "$WORK/key0"
chmod 600 "$WORK/key0"
spdk keyring_file_add_key key0 "$WORK/key0" >/dev/null
expect "$(spdk keyring_get_keys)" "r[0]['name'] == 'key0' and r[0]['path'] == '$WORK/key0' and 'DHHC' not in json.dumps(r)"
spdk nvmf_subsystem_add_host "$NQN" "$HNQN" --dhchap-key key0 >/dev/null
expect "$(spdk nvmf_get_subsystems)" "any(h.get('dhchap_key') == 'key0' for s in r for h in s['hosts'])"
expect "$(spdk save_config)" \
  "[c['params']['name'] for s in r['subsystems'] if s['subsystem'] == 'keyring' for c in s['config']] == ['key0'] and any(c['params'].get('dhchap_key') == 'key0' for s in r['subsystems'] if s['subsystem'] == 'nvmf' for c in s['config'] if c['method'] == 'nvmf_subsystem_add_host')"
spdk nvmf_subsystem_remove_host "$NQN" "$HNQN" >/dev/null
spdk keyring_file_remove_key key0 >/dev/null
expect "$(brpc keyring_get_keys)" 'r == []'
spdk nvmf_delete_subsystem "$NQN" >/dev/null
# ANA: a subsystem with ANA reporting and a controller ID range, a namespace in group 2,
# a listener made inaccessible for that group, then moved to group 1.
ANQN=nqn.2016-06.io.spdk:ana1
spdk bdev_malloc_create -b Malloc1 32 512 >/dev/null
spdk nvmf_create_subsystem "$ANQN" -a -r -i 1000 -I 1999 >/dev/null
expect "$(spdk nvmf_get_subsystems "$ANQN")" "r[0]['min_cntlid'] == 1000 and r[0]['max_cntlid'] == 1999 and r[0]['ana_reporting']"
spdk nvmf_subsystem_add_ns "$ANQN" Malloc1 -a 2 >/dev/null
spdk nvmf_subsystem_add_listener "$ANQN" -t tcp -a 127.0.0.1 -s "$PORT" -f ipv4 -n non_optimized >/dev/null
expect "$(spdk nvmf_subsystem_get_listeners "$ANQN")" "r[0]['ana_states'] == [{'ana_group': 2, 'ana_state': 'non_optimized'}]"
spdk nvmf_subsystem_listener_set_ana_state "$ANQN" -n inaccessible -t tcp -a 127.0.0.1 -s "$PORT" -f ipv4 -g 2 >/dev/null
expect "$(brpc nvmf_subsystem_get_listeners --nqn "$ANQN")" "r[0]['ana_states'][0]['ana_state'] == 'inaccessible'"
expect "$(spdk save_config)" \
  "any(c['method'] == 'nvmf_subsystem_listener_set_ana_state' for s in r['subsystems'] if s['subsystem'] == 'nvmf' for c in s['config'])"
spdk nvmf_subsystem_set_ns_ana_group "$ANQN" 1 1 >/dev/null
expect "$(spdk nvmf_get_subsystems "$ANQN")" "r[0]['namespaces'][0]['anagrpid'] == 1"
spdk nvmf_delete_subsystem "$ANQN" >/dev/null
echo "spdk-rpc: $(wc -l < "$WORK/calls") calls passed through SPDK's rpc.py and baton rpc in $(( $(date +%s) - T0 )) s"

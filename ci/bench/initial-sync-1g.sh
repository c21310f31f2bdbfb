#!/usr/bin/env bash
# Initial sync of a 1 GiB volume through two relay processes to a standby, then replicated
# 64 KiB writes over the same relays: the two rates side by side (docs/replication.md,
# "Block sync"). Run from the repository root after `cargo build --release`.
B=${BATON:-target/release/baton}
trap 'kill $(jobs -p) 2>/dev/null; rm -rf $D' EXIT
D=/dev/shm/m1g; rm -rf $D; mkdir -p $D/r1 $D/r2
$B standby -m 0x2 --listen 127.0.0.1:7701 -r $D/s.sock --bdev sv=malloc,size=1G,bs=4096 --bdev sst=malloc,size=2G,bs=4096 > $D/s.log 2>&1 &
for i in $(seq 1 100); do [ -S $D/s.sock ] && break; sleep 0.2; done
$B rpc -s $D/s.sock standby_create '{"name":"v","mode":"delayed","volume_bdev":"sv","staging_bdev":"sst","format":true}' >/dev/null
$B relay -m 0x2 -r $D/r1.sock --listen 127.0.0.1:7711 --journal-dir $D/r1 --journal-bytes-max 4G --standby 127.0.0.1:7701 > $D/r1.log 2>&1 &
$B relay -m 0x2 -r $D/r2.sock --listen 127.0.0.1:7712 --journal-dir $D/r2 --journal-bytes-max 4G --standby 127.0.0.1:7701 --backup > $D/r2.log 2>&1 &
$B target -m 0x1 -r $D/p.sock --bdev Base=malloc,size=1G,bs=4096 > $D/p.log 2>&1 &
for i in $(seq 1 100); do [ -S $D/p.sock ] && break; sleep 0.2; done; sleep 0.5
$B rpc -s $D/p.sock replication_create_volume '{"name":"v","base_bdev":"Base","relays":["127.0.0.1:7711","127.0.0.1:7712"],"initial_sync":true}' >/dev/null
for i in $(seq 1 600); do
  st=$($B rpc -s $D/p.sock replication_get_volumes '{"name":"v"}')
  s=$(echo "$st" | python3 -c 'import json,sys; v=json.load(sys.stdin)[0]["sync"] or {}; print(v.get("state"), v.get("bytes_sent"), v.get("elapsed_ms"), v.get("rate_bytes_per_sec"))')
  case "$s" in done*) echo "initial sync: $s"; break;; esac
  sleep 0.5
done

$B perf --bdev malloc,size=1G --replicate 2 --relays 127.0.0.1:7711,127.0.0.1:7712 -w write -o 65536 -q 16 -t 5 -m 0x1 2>&1 | tail -6

#!/usr/bin/env bash
# Instructions per request of each stack, counted by valgrind's callgrind
# (Debian package `valgrind`). Each variant runs twice, with a small and a
# large number of requests; the difference over the difference in requests
# is the cost of one request, set-up excluded.
#
# Usage: benches/callgrind.sh
set -euo pipefail
cd "$(dirname "$0")"

command -v valgrind >/dev/null || {
  echo "valgrind is missing: apt-get install -y valgrind" >&2
  exit 1
}
cargo build --release --example instructions
bin=../target/release/examples/instructions

instructions() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 |
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

printf '%-28s %s\n' variant instructions/request
for stack in noop real; do
  if [ "$stack" = noop ]; then small=1000 large=101000; else small=200 large=2200; fi
  for layer in none add_authorization routera_auth; do
    a=$(instructions "$stack/$layer" "$small")
    b=$(instructions "$stack/$layer" "$large")
    printf '%-28s %s\n' "$stack/$layer" "$(( (b - a) / (large - small) ))"
  done
done
# Each request for the next of 1,000 clients: the single-provider layer
# (which ignores the key) against the per-client layer.
small=1000 large=101000
for layer in routera_auth_keyed per_client; do
  a=$(instructions "noop/$layer" "$small")
  b=$(instructions "noop/$layer" "$large")
  printf '%-28s %s\n' "noop/$layer" "$(( (b - a) / (large - small) ))"
done

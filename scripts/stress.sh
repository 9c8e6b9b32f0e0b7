#!/bin/bash
# Soak: ROUNDS rounds of the whole suite under both harnesses (nextest: one process per test;
# libtest: many tests on threads of one process), each run bounded by `timeout 300`, so that a
# hang counts as a failure instead of stopping the loop. Logs: $LOGS/nt-N.log, $LOGS/ct-N.log.
#
#   ROUNDS=20 bash scripts/stress.sh          # from the repository's root
set -u
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-20}
LOGS=${LOGS:-/tmp/multiproc-stress}
mkdir -p "$LOGS"
pass=0; fail=0; hang=0
count() {
  if [ "$1" -eq 124 ]; then hang=$((hang + 1)); elif [ "$1" -eq 0 ]; then pass=$((pass + 1)); else fail=$((fail + 1)); fi
}
for i in $(seq 1 "$ROUNDS"); do
  timeout 300 cargo nextest run --release --no-fail-fast >"$LOGS/nt-$i.log" 2>&1; count $?
  timeout 300 cargo test --release --lib --tests >"$LOGS/ct-$i.log" 2>&1; count $?
  echo "round $i: pass=$pass fail=$fail hang=$hang"
done
[ "$fail" -eq 0 ] && [ "$hang" -eq 0 ]

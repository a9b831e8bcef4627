#!/bin/bash
# rings-register: each event type is registered by its own consumer process,
# independently; a second consumer of a taken type gets EBUSY; status shows
# both; unregistering and registering again work; the series' C test
# program passes; malformed requests get errors and leave Xen fine.
set -uo pipefail
. /opt/xme/lib.sh

G=reg

boot_guest "$G"

# --------------------------------------------------------- the C test program
out=$(LD_LIBRARY_PATH=/usr/local/lib/xme/lib /usr/local/lib/xme/bin/test-mem-event "$D" 2>&1)
rc=$?
oks=$(echo "$out" | grep -c '^  ok ' || true)
if [ $rc = 0 ] && echo "$out" | grep -q '^PASS: 0 failure(s)$'; then
    result c-test-program PASS "$oks checks ok (register/EBUSY/map/takeover/unregister, malformed domctls, impossible consumer indices)"
else
    echo "$out" | sed 's/^/    | /'
    result c-test-program FAIL "rc=$rc, $(echo "$out" | grep -c FAIL) failed"
fi

# --------------------------------------------------------- two consumers
R=$XME_RUN/reg
xen-mem-event pager --domain "$D" --json > "$R-pager1.jsonl" 2> "$R-pager1.err" &
P1=$!
xen-mem-event watch --domain "$D" --json --interval 2 > "$R-watch.jsonl" 2> "$R-watch.err" &
W=$!
if wait_for 20 ring_connected "$D" SHARING_OOM && wait_for 20 ring_connected "$D" SHARING_INVALIDATE; then
    result two-consumers PASS "pager pid $P1 and watcher pid $W attached, both rings connected"
else
    result two-consumers FAIL "rings not connected: $(cat "$R-pager1.err" "$R-watch.err" | tr '\n' ' ')"
fi

st=$(xen-mem-event status --domain "$D")
echo "$st" | sed 's/^/    | /'
all=$(xen-mem-event status 2>&1)
rc=$?
if [ "$(echo "$st" | grep -c '^ *'"$D"' ')" = 2 ] && [ $rc = 0 ] && [ "$(echo "$all" | grep -c '^ *'"$D"' ')" = 2 ]; then
    result status PASS "two rings listed for d$D, with --domain and for all domains"
else
    result status FAIL "status: $(echo "$st" | tr '\n' ' '); all domains (rc $rc): $(echo "$all" | tr '\n' ' ')"
fi

# A third consumer of a taken type: EBUSY, exit 1, one clear line.
for t in oom invalidate; do
    out=$(xen-mem-event register --domain "$D" --type $t 2>&1)
    rc=$?
    if [ $rc = 1 ] && echo "$out" | grep -q 'already has a consumer'; then
        result busy-$t PASS "$out"
    else
        result busy-$t FAIL "rc=$rc: $out"
    fi
done

# Unregister one (Ctrl-C on its consumer): the other is untouched.
stop_tool "$P1"
if [ "$STOP_RC" = 0 ] && wait_for 10 ring_absent "$D" SHARING_OOM && ring_connected "$D" SHARING_INVALIDATE; then
    result detach PASS "pager exited 0 on SIGINT, its ring is gone, the watcher's is still connected; $(jfield "$R-pager1.jsonl" summary ended)"
else
    result detach FAIL "pager rc=$STOP_RC; status: $(xen-mem-event status --domain "$D" 2>&1 | tr '\n' ' ')"
fi

# ... and register again.
xen-mem-event pager --domain "$D" --json > "$R-pager2.jsonl" 2> "$R-pager2.err" &
P2=$!
if wait_for 20 ring_connected "$D" SHARING_OOM; then
    result reregister PASS "a new pager attached to SHARING_OOM"
else
    result reregister FAIL "$(cat "$R-pager2.err")"
fi

# Explicit takeover from a live consumer (recovery tool).
out=$(xen-mem-event register --domain "$D" --type invalidate --takeover --json 2>&1)
rc=$?
if [ $rc = 0 ] && echo "$out" | grep -q '"kind":"registered"'; then
    result takeover PASS "$out"
else
    result takeover FAIL "rc=$rc: $out"
fi
# The old watcher notices the takeover by itself (its ring is flagged
# DETACHED), says so and exits 1, leaving the new registration alone.
wait_for 10 sh -c "! kill -0 $W 2>/dev/null"
stop_tool "$W"
watch_rc=$STOP_RC
if [ "$watch_rc" = 1 ] && grep -q '"cause":"taken_over"' "$R-watch.jsonl" &&
   [ "$(ring_field "$D" SHARING_INVALIDATE consumer)" = 0 ]; then
    result takeover-old-consumer PASS "old watcher exited 1 by itself: $(tail -n 1 "$R-watch.err"); the new registration is still there"
else
    result takeover-old-consumer FAIL "watcher rc=$watch_rc: $(tail -n 2 "$R-watch.err" | tr '\n' ' '); $(xen-mem-event status --domain "$D" 2>&1 | tr '\n' ' ')"
fi
# Only the owner token unregisters; without it 'unregister' takes over first.
token=$(echo "$out" | sed -n 's/.*"token":\([0-9]*\).*/\1/p')
out=$(xen-mem-event unregister --domain "$D" --type invalidate --token "$((token + 1))" 2>&1)
rcs=$?
out1=$(xen-mem-event unregister --domain "$D" --type invalidate --token "$token" 2>&1)
rc=$?
out2=$(xen-mem-event unregister --domain "$D" --type invalidate 2>&1)
rc2=$?
if [ -n "$token" ] && [ $rcs = 1 ] && [ $rc = 0 ] && [ $rc2 = 1 ] && echo "$out2" | grep -q 'no SHARING_INVALIDATE ring'; then
    result unregister PASS "another token: $out; the owner token: $out1; then: $out2"
else
    result unregister FAIL "token '$token'; another token rc=$rcs ($out); owner token rc=$rc ($out1); then rc=$rc2 ($out2)"
fi
stop_tool "$P2"
[ "$STOP_RC" = 0 ] || result pager-exit FAIL "second pager rc=$STOP_RC"

# --------------------------------------------------------- bad requests
out=$(xen-mem-event pager --domain 31999 2>&1); rc=$?
if [ $rc = 1 ] && echo "$out" | grep -q 'no domain 31999'; then
    result no-domain PASS "$out"
else
    result no-domain FAIL "rc=$rc: $out"
fi
out=$(xen-mem-event register --domain 0 --type oom 2>&1); rc=$?
if [ $rc = 1 ]; then
    result own-domain PASS "$out"
else
    result own-domain FAIL "rc=$rc: $out"
fi
out=$(xen-mem-event register --domain "$D" --type invalidate --frames 3 2>&1); rc=$?
if [ $rc = 1 ] && echo "$out" | grep -qi 'invalid'; then
    result bad-frames PASS "$out"
else
    result bad-frames FAIL "rc=$rc: $out"
fi

memtest_check guest-fine "$G" verify 60
guest_destroy "$G"
exit $fail

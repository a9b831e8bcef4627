#!/bin/bash
# rings-loss: a consumer too slow for the invalidation rate.  The watcher
# attaches to a one-frame ring (128 records) and is then stopped (SIGSTOP)
# while two rounds of sharing and unsharing produce more records than the
# ring holds.  Xen never waits: the surplus is counted as lost, in the
# shared header and in GET_INFO.  Resumed, the watcher reports exactly that
# loss, and produced = consumed + lost.
set -uo pipefail
. /opt/xme/lib.sh

G=loss
N=${XME_NSHARE:-40}

boot_guest "$G"
memshare enable "$D" >/dev/null 2>&1 || { result share-enable FAIL "xen-memshare enable $D"; guest_destroy "$G"; exit 1; }

R=$XME_RUN/loss
xen-mem-event watch --domain "$D" --frames 1 --batch 32 --records --json > "$R-watch.jsonl" 2> "$R-watch.err" &
W=$!
wait_for 20 ring_connected "$D" SHARING_INVALIDATE || result attach FAIL "$(cat "$R-watch.err")"
kill -STOP "$W"

attempts=0
for round in 1 2; do
    share_pages "$G" "$D" zero zero "$N"; a=$SHARED na=$NOMINATED
    share_pages "$G" "$D" ident same "$N"; b=$SHARED nb=$NOMINATED
    line=$(guest_cmd "$G" write 300) || line="(no answer)"
    case "$line" in "MEMTEST PASS "*) ;; *) result write-$round FAIL "$line" ;; esac
    # MERGED per page merged away, UNSHARED per nominated gfn.
    attempts=$(( attempts + a + b + na + nb ))
done
prod=$(ring_field "$D" SHARING_INVALIDATE produced)
lost=$(ring_field "$D" SHARING_INVALIDATE lost)
if [ "$prod" = 128 ] && [ "$lost" = $((attempts - 128)) ]; then
    result overrun PASS "$attempts records attempted into 128 slots: produced $prod, lost $lost"
else
    result overrun FAIL "$attempts records attempted: produced '$prod' lost '$lost' (want 128 and $((attempts - 128)))"
fi

kill -CONT "$W"
wait_for 30 sh -c "[ \$(grep -c '\"kind\":\"invalidate\"' '$R-watch.jsonl') -ge 128 ]"
stop_tool "$W"
seen=$(jcount "$R-watch.jsonl" invalidate)
told=$(jfield "$R-watch.jsonl" summary lost)
xen_prod=$(jfield "$R-watch.jsonl" summary xen_produced)
xen_lost=$(jfield "$R-watch.jsonl" summary xen_lost)
if [ "$STOP_RC" = 0 ] && [ "$seen" = 128 ] && [ "$told" = "$lost" ] && [ "$xen_prod" = 128 ] && [ "$xen_lost" = "$lost" ] &&
   [ $((seen + told)) = "$attempts" ]; then
    result loss-accounting PASS "consumed $seen + lost $told = produced+lost $attempts exactly; $(grep -m1 '"kind":"lost"' "$R-watch.jsonl")"
else
    result loss-accounting FAIL "rc=$STOP_RC consumed $seen, watcher lost $told, Xen produced $xen_prod lost $xen_lost, attempts $attempts"
fi
memtest_check verify "$G" verify 120
guest_destroy "$G"
exit $fail

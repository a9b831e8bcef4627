#!/bin/bash
# share-daemon: the sharing daemon (xen-mem-event share) on three guests,
# then beside the OOM pager.
#
#  1. three guests whose memtest regions are 2 MiB zero, 2 MiB ident (the
#     same contents in every guest) and 2 MiB unique (different in every
#     page and every guest), no periodic verify
#  2. one daemon process for the three (--domain three times, JSON); wait
#     until two full scans in a row change nothing (share_settle)
#  3. shared within and across guests: a sample of the zero gfns of all
#     three guests holds one handle, a sample of the ident gfns another
#     (nominating an already shared gfn returns its handle, changes
#     nothing); the daemon's pages_sharing is Xen's pages freed; host free
#     memory grew by what the daemon saved, less what Xen allocates for its
#     own bookkeeping of shared gfns (an xmalloc'd gfn_info per gfn and a
#     page_sharing_info per frame, 64 bytes each at most), within 1 MiB
#  4. beside the pager: our pager attaches to guest 1's SHARING_OOM ring,
#     guest 1's allowance is capped, guest 1 rewrites its zero and ident
#     pages (every one was shared: OOM events, answered by the pager) while
#     the daemon keeps running and applies the UNSHARED records from guest
#     1's SHARING_INVALIDATE ring; guest 1 verifies
#  5. Ctrl-C: the daemon exits 0 with a consistent summary (attempts = ok +
#     stale + failed), no ring is left registered; the unique pages were
#     never shared (nominating a sample of them after the daemon has gone
#     makes one new shared frame each); every guest verifies
set -uo pipefail
. /opt/xme/lib.sh

MT=-z,2,-i,2,-u,2,-p,0
PAGES=512             # pages per 2 MiB region
R=$XME_RUN/share-daemon
NAMES=(sd1 sd2 sd3)
DOMS=()

cleanup() { for g in "${NAMES[@]}"; do guest_destroy "$g"; done; }

# ------------------------------------------------------------ 1. guests
for g in "${NAMES[@]}"; do
    boot_guest "$g" "$MT"
    DOMS+=("$D")
done

read -r freed0 used0 < <(sharing_info)
free0=$(free_mib)
xme_log "before the daemon: free ${free0} MiB, Xen freed $freed0 pages in $used0 frames"

# ------------------------------------------------------------ 2. daemon
t0=$(now_ms)
xen-mem-event share --domain sd1 --domain sd2 --domain sd3 --json --interval 1 \
    --pages-per-sec 200000 --pass-interval 0.1 > "$R.jsonl" 2> "$R.err" &
S=$!
if wait_for 30 sh -c "[ \$(grep -c '\"kind\":\"managed\"' '$R.jsonl') -ge 3 ]" &&
   wait_for 10 ring_connected "${DOMS[2]}" SHARING_INVALIDATE; then
    result managed PASS "one daemon (pid $S) manages d${DOMS[0]} d${DOMS[1]} d${DOMS[2]}, a ring each"
else
    result managed FAIL "$(grep -F refused "$R.jsonl" | tr '\n' ' ') $(tr '\n' ' ' < "$R.err")"
    kill -INT "$S"; cleanup; exit 1
fi
if ! sharing=$(share_settle "$R.jsonl" 600); then
    result settle FAIL "no two quiet full scans within 600 s; last: $(grep -F interval "$R.jsonl" | tail -n 1)"
    kill -INT "$S"; cleanup; exit 1
fi
result settle PASS "$sharing pages sharing after $(( ($(now_ms) - t0) / 1000 )) s, $(sfield "$R.jsonl" full_scans) full scans, $(sfield "$R.jsonl" pages_scanned) pages scanned"

# ------------------------------------------------------------ 3. what is shared
# handles REGION N: the handles of N gfns of REGION of every guest, one a line.
handles() {
    local i g
    for i in 0 1 2; do
        for g in $(guest_gfns "${NAMES[$i]}" "$1" "$2"); do
            nominate "${DOMS[$i]}" "$g" || echo "none:${NAMES[$i]}:$g"
        done
    done
}
hz=$(handles zero 8 | sort -u)
hi=$(handles ident 8 | sort -u)
if [ "$(echo "$hz" | wc -l)" = 1 ] && [ "$(echo "$hi" | wc -l)" = 1 ] && [ "$hz" != "$hi" ]; then
    result shared-across PASS "24 zero gfns of 3 guests on handle $hz, 24 ident gfns on handle $hi"
else
    result shared-across FAIL "zero handles: $(tr '\n' ' ' <<< "$hz"); ident handles: $(tr '\n' ' ' <<< "$hi")"
fi

read -r freed1 used1 < <(sharing_info)
ps=$(sfield "$R.jsonl" pages_sharing) xs=$(sfield "$R.jsonl" host_saved)
if [ -n "$ps" ] && [ $((ps - xs)) -le 16 ] && [ $((xs - ps)) -le 16 ]; then
    result ksm-counters PASS "daemon pages_sharing $ps, Xen pages freed $xs (same pass), $(sfield "$R.jsonl" pages_shared) frames"
else
    result ksm-counters FAIL "daemon pages_sharing '$ps' vs Xen pages freed '$xs'"
fi

# Free memory: what Xen freed, less its bookkeeping, within 1 MiB.
free1=$(free_mib)
verdict=$(awk -v f0="$free0" -v f1="$free1" -v s0="$freed0" -v s1="$freed1" -v u1="$used1" 'BEGIN {
    grew = f1 - f0; saved = (s1 - s0) / 256; meta = ((s1 + u1) + u1) * 64 / 1048576
    ok = (grew <= saved + 1) && (grew >= saved - meta - 1)
    printf "%s free memory grew %d MiB; Xen freed %.1f MiB (%d pages), bookkeeping at most %.1f MiB\n",
        ok ? "PASS" : "FAIL", grew, saved, s1 - s0, meta }')
result free-memory "${verdict%% *}" "${verdict#* }"

# ------------------------------------------------------------ 4. beside the pager
D1=${DOMS[0]}
ra0=$(sfield "$R.jsonl" records_applied)
xen-mem-event pager --domain "$D1" --step 256 --json > "$R-pager.jsonl" 2> "$R-pager.err" &
P=$!
if wait_for 20 ring_connected "$D1" SHARING_OOM; then
    result pager-attach PASS "pager (pid $P) on d$D1 beside the daemon"
else
    result pager-attach FAIL "$(tr '\n' ' ' < "$R-pager.err")"
fi
cap_allowance "$D1"
memtest_check write-beside-daemon sd1 write 300
want=$(( ra0 + 2 * PAGES ))
wait_for 30 sh -c "[ \"\$(grep -F '\"kind\":\"interval\"' '$R.jsonl' | tail -n 1 | sed -n 's/.*\"records_applied\":\([0-9]*\).*/\1/p')\" -ge $want ]"
ra1=$(sfield "$R.jsonl" records_applied)
ooms=$(jcount "$R-pager.jsonl" oom '"answered":true')
if kill -0 "$S" 2>/dev/null && [ "${ra1:-0}" -ge "$want" ] && [ "$ooms" -ge 1 ]; then
    result daemon-beside-pager PASS "daemon still running, $((ra1 - ra0)) records applied during the write ($((2 * PAGES)) gfns unshared), pager answered $ooms OOM events"
else
    result daemon-beside-pager FAIL "daemon alive: $(kill -0 "$S" 2>/dev/null && echo yes || echo no), records applied $ra0 -> $ra1 (want >= $want), OOM events answered $ooms"
fi
sharing2=$(share_settle "$R.jsonl" 300) || sharing2="(not settled)"
xme_log "after the write: $sharing2 pages sharing"

# ------------------------------------------------------------ 5. stop
# What the daemon cost: its CPU time (utime + stime of /proc/PID/stat) per
# page saved, and pages scanned per second of its life (counts for the
# README, not judged).
read -r cpu_ticks < <(awk '{print $14 + $15}' "/proc/$S/stat" 2>/dev/null) || cpu_ticks=
life_s=$(( ( $(now_ms) - t0 ) / 1000 ))
stop_tool "$S"
src=$STOP_RC
stop_tool "$P"
prc=$STOP_RC
sum=$(grep -F '"kind":"summary"' "$R.jsonl")
att=$(jfield "$R.jsonl" summary share_attempts) okn=$(jfield "$R.jsonl" summary share_ok)
ss=$(jfield "$R.jsonl" summary stale_source) sc=$(jfield "$R.jsonl" summary stale_client)
sf=$(jfield "$R.jsonl" summary share_failed) cs=$(jfield "$R.jsonl" summary client_shared)
absent=1
for d in "${DOMS[@]}"; do ring_absent "$d" SHARING_INVALIDATE || absent=0; done
if [ "$src" = 0 ] && [ -n "$att" ] && [ "$att" = $((okn + ss + sc + sf + ${cs:-0})) ] && [ "$absent" = 1 ]; then
    result daemon-stop PASS "exit 0, attempts $att = $okn ok + $((ss + sc)) stale + $sf failed + $cs refused both ways, every ring unregistered; agrees with Xen: $(jfield "$R.jsonl" summary agrees)"
else
    result daemon-stop FAIL "rc $src, rings gone $absent, summary: $sum $(tr '\n' ' ' < "$R.err")"
fi
if [ "$prc" = 0 ]; then result pager-stop PASS "pager exit 0"; else result pager-stop FAIL "pager rc $prc"; fi
scanned=$(jfield "$R.jsonl" summary pages_scanned) sharing=$(jfield "$R.jsonl" summary pages_sharing)
if [ -n "$cpu_ticks" ] && [ -n "$scanned" ] && [ "${sharing:-0}" -gt 0 ] && [ "$life_s" -gt 0 ]; then
    awk -v t="$cpu_ticks" -v hz="$(getconf CLK_TCK)" -v sc="$scanned" -v sh="$sharing" -v l="$life_s" \
        'BEGIN { printf "[xme share-daemon] cost: %.1f s CPU in %d s, %d pages scanned (%.0f/s), %d pages sharing: %.1f us CPU per page saved\n", t / hz, l, sc, sc / l, sh, 1e6 * t / hz / sh }'
fi

# Unique pages: none was shared, so nominating each makes a frame.
read -r _ u_before < <(sharing_info)
n=0
for i in 0 1 2; do
    for g in $(guest_gfns "${NAMES[$i]}" unique 8); do
        nominate "${DOMS[$i]}" "$g" >/dev/null && n=$((n + 1))
    done
done
read -r _ u_after < <(sharing_info)
if [ "$n" -gt 0 ] && [ $((u_after - u_before)) = "$n" ]; then
    result unique-not-shared PASS "$n unique gfns nominated: $n new shared frames (none was shared)"
else
    result unique-not-shared FAIL "$n unique gfns nominated, shared frames $u_before -> $u_after"
fi

for g in "${NAMES[@]}"; do
    memtest_check "verify-$g" "$g" verify 120
done
cleanup
exit $fail

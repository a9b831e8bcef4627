#!/bin/bash
# rings-oom: OOM and handle invalidation end to end, each on its own ring
# with its own consumer process.
#
#  1. boot the guest; attach the invalidate watcher and the OOM pager
#  2. share identical pages (Debian's xen-memshare, nominate -> check
#     contents -> share): MERGED records for the pages merged away
#  3. cap the guest's allowance at what it owns (paused), so that every
#     unshare that needs a copy fails for lack of memory
#  4. the guest writes every shared page: its vCPU pauses on each failed
#     unshare, the pager raises the allowance by one page and answers, the
#     vCPU retries; the guest then verifies all its memory
#  5. counts: one OOM event per copied page, UNSHARED records for every
#     gfn, HANDLE_GONE for the last gfn of each page, produced = consumed,
#     nothing lost, no vCPU left paused; both tools detach cleanly
set -uo pipefail
. /opt/xme/lib.sh

G=oom
N=${XME_NSHARE:-24}

boot_guest "$G"
memshare enable "$D" >/dev/null 2>&1 || { result share-enable FAIL "xen-memshare enable $D"; guest_destroy "$G"; exit 1; }

R=$XME_RUN/oom
attach_both "$D" "$R" 16 4

# ------------------------------------------------------------ 2. share
share_both "$G" "$D" "$N" share
shared=$SHARED_ALL nominated=$NOMINATED_ALL
wait_for 10 sh -c "[ \$(grep -c '\"reason\":\"merged\"' '$R-watch.jsonl') -ge $shared ]"
merged=$(jcount "$R-watch.jsonl" invalidate '"reason":"merged"')
merged_gone=$(jcount "$R-watch.jsonl" invalidate '"reason":"merged"' '"handle_gone":true')
if [ "$merged" = "$shared" ] && [ "$merged_gone" = "$shared" ]; then
    result invalidate-merged PASS "$merged MERGED records, all with the client handle gone"
else
    result invalidate-merged FAIL "MERGED records $merged (handle gone $merged_gone), want $shared"
fi

# ------------------------------------------------------------ 3. cap
cap_allowance "$D"

# ------------------------------------------------------------ 4. write
memtest_check write-through-oom "$G" write 300
memtest_check verify "$G" verify 120

# ------------------------------------------------------------ 5. counts
# Every nominated gfn is unshared by the write: with a copy, except the
# last gfn of each page (merged or not), which makes the page private.
copies=$shared
pages=$((nominated - shared))
wait_for 10 sh -c "[ \$(grep -c '\"reason\":\"unshared\"' '$R-watch.jsonl') -ge $nominated ]"
ooms=$(jcount "$R-pager.jsonl" oom '"answered":true')
unshared=$(jcount "$R-watch.jsonl" invalidate '"reason":"unshared"')
last=$(jcount "$R-watch.jsonl" invalidate '"reason":"unshared"' '"handle_gone":true')
paused=$(ring_field "$D" SHARING_OOM paused_vcpus)
# One event per copy; making a page private again (its last gfn) takes
# the domain one page over its allowance without allocating, which costs
# at most one more event per page made private.
if [ "$ooms" -ge "$copies" ] && [ "$ooms" -le $((copies + pages)) ] && [ "$paused" = 0 ]; then
    result oom-events PASS "$ooms OOM events answered for $copies copies, 0 vCPUs paused; e.g. $(grep -m1 '"kind":"oom"' "$R-pager.jsonl")"
else
    result oom-events FAIL "OOM events answered $ooms, want $copies..$((copies + pages)); paused vCPUs '$paused'"
fi
if [ "$unshared" = "$nominated" ] && [ "$last" = "$pages" ]; then
    result invalidate-unshared PASS "$unshared UNSHARED records, $last with the handle gone (last gfn of each page)"
else
    result invalidate-unshared FAIL "UNSHARED $unshared (want $nominated), handle gone $last (want $pages)"
fi
prod=$(ring_field "$D" SHARING_INVALIDATE produced)
cons=$(ring_field "$D" SHARING_INVALIDATE consumed)
lost=$(ring_field "$D" SHARING_INVALIDATE lost)
bad=$(ring_field "$D" SHARING_OOM bad_responses)
if [ -n "$prod" ] && [ "$prod" = "$cons" ] && [ "$lost" = 0 ] && [ "$prod" = $((merged + unshared)) ] && [ "$bad" = 0 ]; then
    result ring-counters PASS "invalidate produced=$prod consumed=$cons lost=$lost; OOM bad responses $bad"
else
    result ring-counters FAIL "invalidate produced=$prod consumed=$cons lost=$lost (records seen $((merged + unshared))); OOM bad responses $bad"
fi

detach_both "$D" "$R"
guest_destroy "$G"
exit $fail

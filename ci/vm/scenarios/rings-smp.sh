#!/bin/bash
# rings-smp: OOM events from two vCPUs of one guest at once, on real Xen.
#
#  1. boot a guest with 2 vCPUs; attach the pager and the watcher
#  2. share identical pages (zero and ident regions), cap the allowance
#  3. the guest writes with two threads, pinned to vCPU 0 and vCPU 1, each
#     writing every other page: both vCPUs fault on unshares, each paused on
#     its own request; the pager answers each by its id
#  4. the pager runs its policy on 4 workers; the policy of vCPU 0's first
#     event is held (it waits for a flag) while vCPU 1 keeps faulting: vCPU 1
#     must be answered again and again meanwhile (a single-threaded pager
#     would answer nobody until the flag, and the check times out)
#  5. checks: OOM events from both vCPUs, all answered, none left paused,
#     no bad response; the guest verifies its memory; clean detach
set -uo pipefail
. /opt/xme/lib.sh

G=smp
N=${XME_NSHARE:-24}
R=$XME_RUN/smp

GUEST_VCPUS=2 boot_guest "$G" "-z,4,-i,4,-u,8,-p,0,-t,2"
memshare enable "$D" >/dev/null 2>&1 || { result share-enable FAIL "xen-memshare enable $D"; guest_destroy "$G"; exit 1; }
# The policy: the allowance becomes what the domain owns + 4 KiB (a page per
# event, as --step 4 would); the first event of vCPU 0 is held until
# /run/xme-smp-go exists.
rm -rf /run/xme-smp-hold /run/xme-smp-go
cat > /run/xme-smp-policy.sh <<'EOF'
#!/bin/sh
if [ "$XME_VCPU" = 0 ] && mkdir /run/xme-smp-hold 2>/dev/null; then
    while [ ! -e /run/xme-smp-go ]; do sleep 0.1; done
fi
exec xme-mem "$XME_DOMID" cap 4 >/dev/null
EOF
chmod +x /run/xme-smp-policy.sh
# /run is mounted noexec: the policy runs through sh.
attach_both "$D" "$R" 16 4 --workers 4 --exec /bin/sh -- /run/xme-smp-policy.sh
share_both "$G" "$D" "$N" share
copies=$SHARED_ALL pages=$((NOMINATED_ALL - SHARED_ALL))
cap_allowance "$D"

(memtest_check write-two-vcpus "$G" write 300 > "$R-write.result") &
WP=$!
v1_answered() { jcount "$R-pager.jsonl" oom '"answered":true' '"vcpu":1'; }
if wait_for 120 test -d /run/xme-smp-hold; then
    held=$(v1_answered)
    if wait_for 60 sh -c "[ \$(grep '\"kind\":\"oom\"' '$R-pager.jsonl' | grep '\"answered\":true' | grep -c '\"vcpu\":1') -ge $((held + 3)) ]"; then
        result workers PASS "vCPU 1 answered $(( $(v1_answered) - held )) times while vCPU 0's policy was held ($held before)"
    else
        result workers FAIL "vCPU 1 answered $(( $(v1_answered) - held )) times in 60 s while vCPU 0's policy was held, want >= 3"
    fi
else
    result workers FAIL "vCPU 0 never reached the held policy"
fi
touch /run/xme-smp-go
wait "$WP"
cat "$R-write.result"
grep -q 'XME-RESULT.* FAIL' "$R-write.result" && fail=1
writers=$(tr -d '\r' < "$(guest_log "$G")" | grep -m1 'MEMTEST WRITERS')
case "$writers" in
*"threads=2 pinned=2"*) result writers PASS "$writers" ;;
*) result writers FAIL "'$writers' (want 2 threads pinned to vCPUs 0 and 1)" ;;
esac

v0=$(jcount "$R-pager.jsonl" oom '"answered":true' '"vcpu":0')
v1=$(jcount "$R-pager.jsonl" oom '"answered":true' '"vcpu":1')
ooms=$((v0 + v1))
all=$(jcount "$R-pager.jsonl" oom)
paused=$(ring_field "$D" SHARING_OOM paused_vcpus)
bad=$(ring_field "$D" SHARING_OOM bad_responses)
# Each copy and each page made private consumes one page of allowance
# (rings-oom): $copies + $pages consumptions; every copy needs an event, and
# one vCPU alone raises at most one per consumption.  With two vCPUs a grant
# can be consumed by the other vCPU before the answered one retries, which
# then faults again: the policies of both vCPUs' events may run before
# either retries.  A vCPU paused on an event faults again only after a
# consumption, so each consumption follows at most one event per vCPU: at
# most 2 per consumption.
most=$((2 * (copies + pages)))
if [ "$v0" -gt 0 ] && [ "$v1" -gt 0 ] && [ "$ooms" = "$all" ] && [ "$ooms" -ge "$copies" ] \
   && [ "$ooms" -le "$most" ] && [ "$paused" = 0 ] && [ "$bad" = 0 ]; then
    result oom-both-vcpus PASS "$ooms OOM events answered for $copies copies: vCPU 0 $v0, vCPU 1 $v1; 0 vCPUs paused, 0 bad responses"
else
    result oom-both-vcpus FAIL "answered vCPU 0 $v0, vCPU 1 $v1 (of $all events), want both > 0 and $copies..$most in all; paused '$paused', bad responses '$bad'"
fi
memtest_check verify "$G" verify 120

detach_both "$D" "$R"
guest_destroy "$G"
exit $fail

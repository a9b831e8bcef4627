#!/bin/bash
# service: the tools as an operator runs them, from the xen-mem-event
# package (installed with apt-get in the image) and its systemd units.
#
#  1. the package is installed, the binary is /usr/bin/xen-mem-event, and
#     'man xen-mem-event-pager' renders its page
#  2. before any guest exists: systemctl enable --now
#     xen-mem-event-pager@svc1 (the OOM pager of the guest named svc1, which
#     waits for it) and xen-mem-event-watch-all (a watcher for every HVM
#     domain as it starts); then two guests start: svc1's SHARING_OOM ring
#     and both guests' SHARING_INVALIDATE rings connected, each consumer's
#     "attached" line in the journal within 5 s (the issue's bound) of its
#     domain's start_time (libxl's, in xenstore: taken as the domain is
#     created, before it is built)
#  3. svc1's pages shared, its allowance capped, its write faults; the
#     pager's policy (a drop-in's PAGER_OPTS) cannot free memory yet, so the
#     vCPU stays paused; kill -9 of the pager: systemd restarts it (a new
#     MainPID, NRestarts 1), the new pager takes the ring over (--takeover
#     in the unit), the vCPU is released and faults again onto the new
#     ring; the policy is let through: the new pager answers, the guest
#     finishes its write and verifies
#  4. svc2 destroyed: watch-all's watcher of svc2 detaches (its journal line
#     says so) while the units stay active and svc1's two rings stay
#     connected
#  5. journalctl -u shows the tools' own lines for both units
#  6. systemctl disable --now: both consumers detach cleanly, no ring left
#  7. the operator's whole setup on svc1 (allowance uncapped): systemctl
#     start xen-mem-event-pager-all and xen-mem-event-share (a drop-in's
#     SHARE_OPTS scans fast): svc1's OOM ring held by pager-all's pager,
#     its invalidation ring by the daemon, which says it manages svc1 and
#     makes Xen free at least 64 more pages; the guest verifies; systemctl
#     stop: both units end inactive (not failed), no ring left
set -uo pipefail
. /opt/xme/lib.sh

G1=svc1 G2=svc2
N=${XME_NSHARE:-12}
R=$XME_RUN/service
PAGER=xen-mem-event-pager@$G1.service
WATCH=xen-mem-event-watch-all.service
PALL=xen-mem-event-pager-all.service
SHARE=xen-mem-event-share.service
DROPIN=/run/systemd/system/$PAGER.d
SHARE_DROPIN=/run/systemd/system/$SHARE.d
BOUND_MS=5000

cleanup() {
    systemctl disable --now "$PAGER" "$WATCH" "$PALL" "$SHARE" >/dev/null 2>&1
    rm -rf "$DROPIN" "$SHARE_DROPIN" /run/xme-svc-go /run/xme-svc-policy.sh
    systemctl daemon-reload
    guest_destroy "$G1"
    guest_destroy "$G2"
}
trap cleanup EXIT

# ------------------------------------------------------------ 1. package
ver=$(dpkg-query -W -f '${Version}' xen-mem-event 2>/dev/null)
bin=$(command -v xen-mem-event)
if [ -n "$ver" ] && [ "$bin" = /usr/bin/xen-mem-event ]; then
    result package PASS "xen-mem-event $ver installed, $bin"
else
    result package FAIL "version '$ver', binary '$bin'"
fi
name=$(MANWIDTH=100 man -P cat xen-mem-event-pager 2>"$R-man.err" | grep -m1 'xen-mem-event-pager -')
if [ -n "$name" ] && MANWIDTH=100 man -P cat xen-mem-event-pager 2>/dev/null | grep -q -- '--takeover'; then
    result man PASS "$(echo "$name" | sed 's/^ *//')"
else
    result man FAIL "$(head -c 300 "$R-man.err")"
fi

# ------------------------------------------------------------ 2. units, attach
# The pager's policy: fails (the vCPU stays paused) until /run/xme-svc-go
# exists, then the allowance becomes what the domain owns + 4 KiB.
rm -f /run/xme-svc-go
cat > /run/xme-svc-policy.sh <<'EOF'
#!/bin/sh
[ -e /run/xme-svc-go ] || exit 1
exec /opt/xme/bin/xme-mem "$XME_DOMID" cap 4 >/dev/null
EOF
mkdir -p "$DROPIN"
# /run is mounted noexec: the policy runs through sh.
cat > "$DROPIN/policy.conf" <<'EOF'
[Service]
Environment="PAGER_OPTS=--exec /bin/sh -- /run/xme-svc-policy.sh"
EOF
systemctl daemon-reload
if systemctl enable --now "$PAGER" "$WATCH" > "$R-enable.log" 2>&1 \
   && wait_for 10 systemctl is-active -q "$PAGER" "$WATCH"; then
    result units-start PASS "$PAGER and $WATCH active before any guest"
else
    result units-start FAIL "$(tr '\n' ' ' < "$R-enable.log"); $(systemctl status --no-pager "$PAGER" "$WATCH" 2>&1 | tail -n 8 | tr '\n' ' ')"
fi

boot_guest "$G1"; D1=$D
boot_guest "$G2"; D2=$D
# attach_delay UNIT DOMID TYPE: ms from the start of the domain's build
# (libxl's start_time in xenstore, 10 ms resolution, taken right after the
# domain is created) to the consumer's own "dN TYPE: attached" line in the
# journal; empty if either is missing.  (A consumer may attach while the
# domain is still being built: the delay is then small or negative.)
attach_delay() {
    local vm st at
    vm=$(xenstore-read "/local/domain/$2/vm" 2>/dev/null) || return
    st=$(xenstore-read "$vm/start_time" 2>/dev/null) || return
    at=$(journalctl -q -o short-unix -u "$1" | grep -m1 " d$2 $3: attached" | awk '{print $1}')
    [ -n "$at" ] && awk -v a="$at" -v s="$st" 'BEGIN {printf "%d\n", (a - s) * 1000}'
}
wait_for 20 sh -c "xen-mem-event status --json | grep -c '\"connected\":true' | grep -qx 3"
ok=1 msg=
for spec in "$PAGER $G1 $D1 SHARING_OOM" "$WATCH $G1 $D1 SHARING_INVALIDATE" \
            "$WATCH $G2 $D2 SHARING_INVALIDATE"; do
    set -- $spec
    ms=$(attach_delay "$1" "$3" "$4")
    msg="$msg $2 $4 ${ms:-never} ms;"
    { [ -n "$ms" ] && [ "$ms" -le $BOUND_MS ] && ring_connected "$3" "$4"; } || ok=0
done
if [ $ok = 1 ]; then
    result attach PASS "rings connected, attached within ${BOUND_MS} ms of the domain's creation:$msg"
else
    result attach FAIL "bound ${BOUND_MS} ms:$msg"
    journalctl -o short-precise -u "$PAGER" -u "$WATCH" | grep -v ' 0 records ' | head -n 30 |
        sed 's/^/    journal| /'
fi

# ------------------------------------------------------------ 3. kill -9, restart, takeover
memshare enable "$D1" >/dev/null 2>&1 || result share-enable FAIL "xen-memshare enable $D1"
share_pages "$G1" "$D1" zero zero "$N"
[ "$SHARED" -ge 2 ] || result share FAIL "only $SHARED pages shared"
cap_allowance "$D1"
log=$(guest_log "$G1")
seq=$(( $(cat "$XME_RUN/$G1.seq" 2>/dev/null || echo 0) + 1 ))
echo "$seq" > "$XME_RUN/$G1.seq"
printf 'write\n' > "$(xenstore-read "/local/domain/$D1/console/tty")"
if wait_for 60 sh -c "[ \"\$(xen-mem-event status --domain $D1 --json | grep SHARING_OOM | sed -n 's/.*\"paused_vcpus\":\([0-9]*\).*/\1/p')\" = 1 ]"; then
    result paused PASS "svc1's vCPU paused on an OOM event the policy cannot answer yet"
else
    result paused FAIL "paused '$(ring_field "$D1" SHARING_OOM paused_vcpus)'"
fi
pid1=$(systemctl show -p MainPID --value "$PAGER")
kill -9 "$pid1"
new_pid() {
    local p
    p=$(systemctl show -p MainPID --value "$PAGER")
    [ "$p" != 0 ] && [ "$p" != "$pid1" ] && systemctl is-active -q "$PAGER"
}
if wait_for 30 new_pid && wait_for 20 ring_connected "$D1" SHARING_OOM; then
    pid2=$(systemctl show -p MainPID --value "$PAGER")
    result restarted PASS "pid $pid1 killed; systemd restarted the pager as pid $pid2 (NRestarts $(systemctl show -p NRestarts --value "$PAGER")), ring connected"
else
    pid2=
    result restarted FAIL "MainPID $(systemctl show -p MainPID --value "$PAGER"), $(systemctl is-active "$PAGER")"
fi
touch /run/xme-svc-go
if wait_log "$log" "seq=$seq( |\$)" 120 "$G1"; then
    line=$(tr -d '\r' < "$log" | grep -E "seq=$seq( |\$)" | tail -n 1)
    case "$line" in
    "MEMTEST PASS "*) result write-finishes PASS "${line#MEMTEST }" ;;
    *) result write-finishes FAIL "$line" ;;
    esac
else
    result write-finishes FAIL "no answer to 'write'; paused $(ring_field "$D1" SHARING_OOM paused_vcpus)"
fi
answered=0
[ -n "$pid2" ] && answered=$(journalctl -q -o cat _PID="$pid2" 2>/dev/null | grep -c 'answered$')
paused=$(ring_field "$D1" SHARING_OOM paused_vcpus)
if [ "$answered" -ge 1 ] && [ "$paused" = 0 ]; then
    result taken-over PASS "the restarted pager answered $answered OOM events, 0 vCPUs paused"
else
    result taken-over FAIL "restarted pager answered $answered, paused '$paused'"
fi

# ------------------------------------------------------------ 4. a guest goes
xl destroy "$D2"
detached() { journalctl -q -o cat -u "$WATCH" | grep -q "^d$D2: watch detached, domain destroyed"; }
if wait_for 30 detached && systemctl is-active -q "$PAGER" "$WATCH" \
   && ring_connected "$D1" SHARING_OOM && ring_connected "$D1" SHARING_INVALIDATE; then
    result detach-one PASS "$(journalctl -q -o cat -u "$WATCH" | grep "^d$D2: watch detached"); svc1's rings still connected"
else
    result detach-one FAIL "$(journalctl -q -o cat -u "$WATCH" | tail -n 5 | tr '\n' ' ') pager $(systemctl is-active "$PAGER") watch $(systemctl is-active "$WATCH")"
fi

# ------------------------------------------------------------ 5. journal
np=$(journalctl -q -o cat -u "$PAGER" | grep -c "^d$D1 SHARING_OOM: attached")
nw=$(journalctl -q -o cat -u "$WATCH" | grep -c "SHARING_INVALIDATE: attached")
if [ "$np" -ge 2 ] && [ "$nw" -ge 2 ]; then
    result journal PASS "journalctl -u: $np pager attach lines (one per start), $nw watcher attach lines"
else
    result journal FAIL "pager attach lines $np (want 2), watcher $nw (want 2)"
fi

# ------------------------------------------------------------ 6. stop
memtest_check verify "$G1" verify 60
systemctl disable --now "$PAGER" "$WATCH" >/dev/null 2>&1
if wait_for 20 ring_absent "$D1" SHARING_OOM && wait_for 20 ring_absent "$D1" SHARING_INVALIDATE; then
    result clean-stop PASS "systemctl stop: both rings of svc1 unregistered"
else
    result clean-stop FAIL "$(xen-mem-event status --domain "$D1" 2>&1 | tr '\n' ' ')"
fi

# ------------------------------------------------------------ 7. pager-all + share
cap_allowance "$D1" 65536
mkdir -p "$SHARE_DROPIN"
cat > "$SHARE_DROPIN/fast.conf" <<'EOF'
[Service]
Environment="SHARE_OPTS=--pages-per-sec 200000 --interval 1 --pass-interval 0.1"
EOF
systemctl daemon-reload
read -r freed0 _ < <(sharing_info)
if systemctl start "$PALL" "$SHARE" > "$R-start.log" 2>&1 \
   && wait_for 20 ring_connected "$D1" SHARING_OOM \
   && wait_for 20 ring_connected "$D1" SHARING_INVALIDATE \
   && systemctl is-active -q "$PALL" "$SHARE"; then
    result units-all PASS "$PALL holds svc1's OOM ring, $SHARE its invalidation ring"
else
    result units-all FAIL "$(tr '\n' ' ' < "$R-start.log") $(systemctl status --no-pager "$PALL" "$SHARE" 2>&1 | tail -n 8 | tr '\n' ' ')"
fi
more_freed() { local f; read -r f _ < <(sharing_info); [ "$f" -ge $((freed0 + 64)) ]; }
managed() { journalctl -q -o cat -u "$SHARE" | grep -q "^d$D1: managed"; }
if wait_for 120 more_freed && managed; then
    read -r freed1 _ < <(sharing_info)
    result share-unit PASS "$(journalctl -q -o cat -u "$SHARE" | grep -m1 "^d$D1: managed"); Xen pages freed $freed0 -> $freed1"
else
    read -r freed1 _ < <(sharing_info)
    result share-unit FAIL "Xen pages freed $freed0 -> $freed1; $(journalctl -q -o cat -u "$SHARE" | tail -n 5 | tr '\n' ' ')"
fi
memtest_check verify-shared "$G1" verify 60
systemctl stop "$PALL" "$SHARE" >/dev/null 2>&1
st=$(systemctl is-active "$PALL" "$SHARE" | tr '\n' ' ')
if [ "$st" = "inactive inactive " ] && wait_for 20 ring_absent "$D1" SHARING_OOM \
   && wait_for 20 ring_absent "$D1" SHARING_INVALIDATE; then
    result stop-all PASS "systemctl stop: both units inactive, no ring of svc1 left"
else
    result stop-all FAIL "states: $st; $(xen-mem-event status --domain "$D1" 2>&1 | tr '\n' ' ')"
fi
errs=$(xen_console_errors)
[ -z "$errs" ] && result xen-quiet PASS "no hypervisor error" || result xen-quiet FAIL "$errs"
exit $fail


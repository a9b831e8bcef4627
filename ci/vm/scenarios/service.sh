#!/bin/bash
# service: the tools as an operator runs them, from the xen-mem-event
# package (installed with apt-get in the image) and its systemd units.
#
#  1. the package is installed, the binary is /usr/bin/xen-mem-event, and
#     'man xen-mem-event-pager' renders its page
#  2. before any guest exists: systemctl enable --now
#     xen-mem-event-pager@svc1 (the OOM pager of the guest named svc1, which
#     waits for it) and xen-mem-event-watch-all (a watcher for every HVM
#     domain as it starts); then two guests start, and a sampler notes when
#     each domain is first seen and when its rings are connected: svc1's
#     SHARING_OOM ring and both guests' SHARING_INVALIDATE rings attached
#     within 5 s of the domain appearing (the issue's bound; the sampler's
#     own period is added to each delay, so it only errs on the long side)
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
set -uo pipefail
. /opt/xme/lib.sh

G1=svc1 G2=svc2
N=${XME_NSHARE:-12}
R=$XME_RUN/service
PAGER=xen-mem-event-pager@$G1.service
WATCH=xen-mem-event-watch-all.service
DROPIN=/run/systemd/system/$PAGER.d
BOUND_MS=5000
SAMPLER=

cleanup() {
    [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null
    systemctl disable --now "$PAGER" "$WATCH" >/dev/null 2>&1
    rm -rf "$DROPIN" /run/xme-svc-go /run/xme-svc-policy.sh
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

# sampler: "seen NAME DOMID T_MS" when a domain is first listed (T: the
# start of the previous round, when it was not yet), "ring DOMID TYPE T_MS"
# when a ring is first connected (T: after the status query).
sampler() {
    local prev t d g line dom ty
    declare -A seen=() ring=()
    prev=$(now_ms)
    while :; do
        t=$(now_ms)
        while read -r g d; do
            case "$g" in "$G1"|"$G2") ;; *) continue ;; esac
            [ -n "${seen[$g.$d]:-}" ] && continue
            seen[$g.$d]=1
            echo "seen $g $d $prev"
        done < <(xl list 2>/dev/null | awk 'NR > 1 {print $1, $2}')
        while read -r line; do
            case "$line" in *'"connected":true'*) ;; *) continue ;; esac
            dom=$(echo "$line" | sed -n 's/.*"domid":\([0-9]*\).*/\1/p')
            ty=$(echo "$line" | sed -n 's/.*"type":"\([A-Z_]*\)".*/\1/p')
            [ -n "${ring[$dom.$ty]:-}" ] && continue
            ring[$dom.$ty]=1
            echo "ring $dom $ty $(now_ms)"
        done < <(xen-mem-event status --json 2>/dev/null)
        echo "round $((t - prev))"
        prev=$t
        sleep 0.1
    done
}
sampler > "$R-samples" &
SAMPLER=$!

boot_guest "$G1"; D1=$D
boot_guest "$G2"; D2=$D
# attach_delay NAME DOMID TYPE: ms from the domain's appearance to its
# ring's connection (empty if never).
attach_delay() {
    local s r
    s=$(awk -v g="$1" -v d="$2" '$1 == "seen" && $2 == g && $3 == d {print $4; exit}' "$R-samples")
    r=$(awk -v d="$2" -v ty="$3" '$1 == "ring" && $2 == d && $3 == ty {print $4; exit}' "$R-samples")
    [ -n "$s" ] && [ -n "$r" ] && echo $((r - s))
}
wait_for 10 sh -c "[ \$(grep -c '^ring' '$R-samples') -ge 3 ]"
kill "$SAMPLER" 2>/dev/null; SAMPLER=
ok=1 msg=
for spec in "$G1 $D1 SHARING_OOM" "$G1 $D1 SHARING_INVALIDATE" "$G2 $D2 SHARING_INVALIDATE"; do
    set -- $spec
    ms=$(attach_delay "$1" "$2" "$3")
    msg="$msg $1 $3 ${ms:-never} ms;"
    { [ -n "$ms" ] && [ "$ms" -le $BOUND_MS ]; } || ok=0
done
rounds=$(awk '$1 == "round" {n++; if ($2 > m) m = $2} END {print n + 0, m + 0}' "$R-samples")
msg="$msg sampler: ${rounds% *} rounds, longest ${rounds#* } ms"
if [ $ok = 1 ]; then
    result attach PASS "within ${BOUND_MS} ms of the domain appearing:$msg"
else
    result attach FAIL "bound ${BOUND_MS} ms:$msg"
    grep -v '^round' "$R-samples" | while read -r what a b t; do
        [ -n "$t" ] || { t=$b; b=; }
        echo "    sample| $(date -d "@${t%???}.${t: -3}" +%T.%3N) $what $a $b"
    done
    journalctl -o short-precise -u "$PAGER" -u "$WATCH" | head -n 40 | sed 's/^/    journal| /'
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
errs=$(xen_console_errors)
[ -z "$errs" ] && result xen-quiet PASS "no hypervisor error" || result xen-quiet FAIL "$errs"
exit $fail

# In-VM helpers for the xen-mem-event scenarios (sourced by run.sh and by
# every scenario).  Runs in dom0 of the test VM.
# shellcheck shell=bash

XME=${XME:-/opt/xme}
XME_RUN=${XME_RUN:-/run/xme}
XEN_BIN=/usr/lib/xen-4.17/bin           # Debian's unpatched tools
CONSOLE_LOG_DIR=/var/log/xen/console     # xenconsoled --log=guest (see /etc/default/xen)
PATH=$XME/bin:$PATH:/usr/sbin:/sbin
export PATH
mkdir -p "$XME_RUN"

# ------------------------------------------------------------------ output
# One machine-readable line per check: XME-RESULT <scenario>.<check> PASS|FAIL <details>
# With XME_DEFER set (run.sh's run_scenario, retry_if_guest_died), the
# line goes to that file instead, to be reported or voided later.
xme_result() {      # xme_result CHECK PASS|FAIL DETAILS...
    local check=$1 verdict=$2
    shift 2
    if [ -n "${XME_DEFER:-}" ]; then
        echo "$check $verdict $*" >> "$XME_DEFER"
        return
    fi
    echo "XME-RESULT ${XME_SCENARIO:-adhoc}.$check $verdict $*"
    echo "${XME_SCENARIO:-adhoc}.$check $verdict" >> "$XME_RUN/results"
}
xme_check() {       # xme_check CHECK DETAILS -- COMMAND...: PASS iff COMMAND succeeds
    local check=$1 details=$2
    shift 2
    [ "${1:-}" = -- ] && shift
    if "$@"; then xme_result "$check" PASS "$details"; else xme_result "$check" FAIL "$details"; fi
}
xme_log() { echo "[xme ${XME_SCENARIO:-}] $*"; }
now_ms() { date +%s%3N; }

# ------------------------------------------------------------------ guests
# The test guest: PVH + HAP, dom0's Debian kernel, busybox initrd running
# memtest (ci/guest/memtest.c).  Its console (hvc0) is logged by xenconsoled
# to $CONSOLE_LOG_DIR/guest-NAME.log; commands go to it through the console
# pty (xenstore /local/domain/ID/console/tty), one line each.

guest_log() { echo "$CONSOLE_LOG_DIR/guest-$1.log"; }
guest_domid() { xl domid "$1" 2>/dev/null; }

# guest_state NAME: the xl list state letters (e.g. "-b----"), empty if gone.
guest_state() { xl list "$1" 2>/dev/null | awk 'NR==2 {print $5}'; }

# wait_log FILE REGEX TIMEOUT_S [NAME]: wait for an extended-regex line in
# FILE; fails early when guest NAME crashed or vanished.  (Console logs have
# CRLF line ends from the guest's tty: CRs are stripped before matching.)
wait_log() {
    local file=$1 re=$2 t=$3 name=${4:-} deadline st
    deadline=$(( $(date +%s) + t ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        [ -f "$file" ] && tr -d '\r' < "$file" | grep -Eq -- "$re" && return 0
        if [ -n "$name" ]; then
            st=$(guest_state "$name")
            case "$st" in
            '') xme_log "guest $name is gone" >&2; return 2 ;;
            *c*) xme_log "guest $name crashed (state $st)" >&2; return 2 ;;
            esac
        fi
        sleep 0.5
    done
    return 1
}

# guest_create NAME [MEMTEST_ARGS]: create the guest and wait for
# 'MEMTEST READY'.  A boot that fails is retried, up to 6 attempts, every
# failed attempt logged (the hypervisor's lines about the domain, the
# guest's early console: earlyprintk=xen).  Under TCG about 1 boot in 10
# triple-faulted early and xl aborted in glibc's malloc checks, with or
# without the series; the aborts came from register corruption under Xen's
# lazy FPU switching, which ci/run-vm.sh now turns off (setup.vector-regs
# checks it).  Whether the triple faults had the same cause is not known:
# the retries stay.  Failed boots come in runs (a CI run on a loaded host
# had two runs of four, each guest halting with interrupts off at once:
# "All CPUs offline"), so the attempts are spaced out, 5 s more each time.
# A boot may take 180 s (GUEST_BOOT_TIMEOUT): under TCG on a busy host it
# took up to 80 s.
# Sets GUEST_DOMID.  MEMTEST_ARGS are memtest's options with commas,
# e.g. "-z,4,-i,4,-u,8,-p,5"; GUEST_VCPUS (default 1) its vCPUs.
guest_create() {
    local name=$1 args=${2:--z,4,-i,4,-u,8,-p,5} cfg log attempt t0 rc
    cfg=$XME_RUN/$name.cfg
    log=$(guest_log "$name")
    sed -e "s|@NAME@|$name|g" -e "s|@KERNEL@|$(cat "$XME/guest/kernel-path")|g" \
        -e "s|@RAMDISK@|$XME/guest/initrd.gz|g" -e "s|@MEMTEST_ARGS@|$args|g" \
        -e "s|@VCPUS@|${GUEST_VCPUS:-1}|g" \
        "$XME/guest.cfg.in" > "$cfg"
    for attempt in 1 2 3 4 5 6; do
        [ "$attempt" = 1 ] || sleep $(( (attempt - 1) * 5 ))
        xl destroy "$name" >/dev/null 2>&1 || true
        rm -f "$log" "$XME_RUN/$name.seq" "$XME_RUN/$name.died"
        t0=$(date +%s)
        if ! timeout 60 xl create -q "$cfg" 2> "$XME_RUN/$name.xl.err"; then
            xme_log "xl create $name failed (attempt $attempt): $(tr '\n' ' ' < "$XME_RUN/$name.xl.err")"
            continue
        fi
        GUEST_DOMID=$(guest_domid "$name") || GUEST_DOMID=''
        echo "$GUEST_DOMID" > "$XME_RUN/$name.domid"
        rc=0
        wait_log "$log" '^MEMTEST READY' "${GUEST_BOOT_TIMEOUT:-180}" "$name" || rc=$?
        if [ $rc = 0 ]; then
            xme_log "guest $name is domain $GUEST_DOMID, ready in $(( $(date +%s) - t0 ))s (attempt $attempt)"
            return 0
        fi
        xme_log "guest $name (d$GUEST_DOMID): no 'MEMTEST READY' (attempt $attempt, rc $rc)"
        guest_gone "$name"
        cp "$log" "$XME_RUN/$name.attempt$attempt.log" 2>/dev/null || true
    done
    xl destroy "$name" >/dev/null 2>&1 || true
    return 1
}

guest_destroy() { xl destroy "$1" >/dev/null 2>&1 || true; }

# guest_gfns NAME REGION [MAX]: the gfns (hex, one a line, at most MAX)
# memtest reported for REGION (zero|ident|unique) in its first report.
guest_gfns() {
    awk -v r="$2" -v max="${3:-0}" '
        function hex(s,   i, v) {          # mawk has no strtonum()
            v = 0
            for (i = 1; i <= length(s); i++)
                v = v * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1
            return v
        }
        { sub(/\r$/, "") }
        /^MEMTEST READY/ { exit }
        $1 == "MEMTEST" && $2 == "GFN" && $3 == r {
            for (i = 4; i <= NF; i++) {
                n = split($i, a, "-")
                lo = hex(a[1]); hi = (n > 1) ? hex(a[2]) : lo
                for (g = lo; g <= hi; g++) {
                    if (max > 0 && ++out > max) exit
                    printf "%x\n", g
                }
            }
        }' "$(guest_log "$1")"
}

# vcpu_times NAME: each vCPU's state and run time, on one line.
vcpu_times() {
    xl vcpu-list "$1" 2>/dev/null | awk 'NR > 1 {printf "v%s %s %ss; ", $3, $5, $6}'
}

# guest_why NAME DOMID: what a guest that does not answer is doing (logged):
# its state, its vCPUs (state and run time, twice 2 s apart: stuck or
# running), its rings, its last console lines.
guest_why() {
    local v1
    v1=$(vcpu_times "$1")
    sleep 2
    xme_log "guest $1: state '$(guest_state "$1")'; vCPUs: $v1 2 s later: $(vcpu_times "$1")"
    xme_log "guest $1: rings: $(xen-mem-event status --domain "$2" 2>&1 | tr '\n' ' ' | cut -c1-400)"
    console_tail "$1"
}

# console_tail NAME: the end of the guest's console log (logged): from the
# first line of a kernel oops (up to 40 lines) if there is one, else the
# last 4 lines.
console_tail() {
    tr -d '\r' < "$(guest_log "$1")" 2>/dev/null \
        | awk '/BUG:|Oops|Kernel panic/ && !o {o = 1} o && n++ < 40; {t[NR % 4] = $0}
               END {if (!o) for (i = NR - 3; i <= NR; i++) if (i > 0) print t[i % 4]}' \
        | sed "s/^/[xme $XME_SCENARIO]   $1| /"
}

# guest_gone NAME: what became of a guest that crashed or vanished (logged):
# the hypervisor's last lines about its domain (guest_create noted its
# domid), its last console lines.
guest_gone() {
    local d
    d=$(cat "$XME_RUN/$1.domid" 2>/dev/null) || d=''
    if [ -n "$d" ]; then
        xen_log | awk -v d="$d" '
            $0 ~ "Dumping Dom" d " vcpu" {n = 13}
            n > 0 {print; n--; next}
            / save: / {next}
            $0 ~ "d" d "v[0-9]|d" d "[: ]|[(]d" d "[)]|[Dd]omain " d "[ :(]|HVM" d " " {print}' \
            | tail -n 24 \
            | sed "s/^/[xme $XME_SCENARIO]   xen| /"
    fi
    console_tail "$1"
}

# guest_cmd NAME COMMAND [TIMEOUT_S]: send one command to memtest and wait
# for its answer (the line with 'seq=K'); prints that line.
guest_cmd() {
    local name=$1 cmd=$2 t=${3:-60} domid tty seq log line rc=0
    domid=$(guest_domid "$name") || {
        xme_log "guest $name not running" >&2
        echo "not running for '$cmd'" >> "$XME_RUN/$name.died"
        guest_gone "$name" >&2
        return 1
    }
    tty=$(xenstore-read "/local/domain/$domid/console/tty" 2>/dev/null) || true
    [ -c "$tty" ] || { xme_log "guest $name: no console pty ($tty)" >&2; return 1; }
    seq=$(( $(cat "$XME_RUN/$name.seq" 2>/dev/null || echo 0) + 1 ))
    echo "$seq" > "$XME_RUN/$name.seq"
    log=$(guest_log "$name")
    printf '%s\n' "$cmd" > "$tty"
    wait_log "$log" "seq=$seq( |\$)" "$t" "$name" || rc=$?
    if [ "$rc" != 0 ]; then
        # stderr: stdout is the caller's answer.  rc 2: crashed or gone.
        xme_log "guest $name: no answer to '$cmd' (seq $seq) within ${t}s" >&2
        echo "no answer to '$cmd' ($([ "$rc" = 2 ] && echo 'crashed or gone' || echo silent))" \
            >> "$XME_RUN/$name.died"
        if [ "$rc" = 2 ]; then guest_gone "$name" >&2; else guest_why "$name" "$domid" >&2; fi
        return 1
    fi
    line=$(tr -d '\r' < "$log" | grep -E "seq=$seq( |\$)" | tail -n 1)
    echo "$line"
}

# ------------------------------------------------------------------ sharing
# memshare ARGS...: Debian's unpatched xen-memshare.
memshare() { "$XEN_BIN/xen-memshare" "$@"; }

# nominate DOMID GFN: prints the handle (0x...) or fails.
nominate() {
    local out
    out=$(memshare nominate "$1" "0x$2" 2>&1) || { echo "$out" >&2; return 1; }
    case "$out" in
    "handle = "*) echo "${out#handle = }" ;;
    *) echo "$out" >&2; return 1 ;;
    esac
}

# sharing_info: "freed used" from 'xen-memshare info' (whose labels are
# swapped: it prints xc_sharing_freed_pages() as "used" and
# xc_sharing_used_frames() as "freed").
sharing_info() {
    memshare info | awk '$1 == "used" {f = $3} $1 == "freed" {u = $3} END {print f + 0, u + 0}'
}

# xen_log: the hypervisor's log since boot, as far as it was read in time.
# Xen's console ring (conring_size=1m) drops its oldest lines as it fills,
# so a count of lines in 'xl dmesg' can fall between two reads (the paging
# scenarios alone print about 5,000 lines); each read here moves what the
# ring holds (xl dmesg -c: read and clear) to the end of a file, and prints
# the file.  Counts of lines from it never fall.  Read the log only
# through it.
XEN_LOG=$XME_RUN/xen.log
xen_log() {
    xl dmesg -c >> "$XEN_LOG" 2>/dev/null
    cat "$XEN_LOG" 2>/dev/null
}

# xen_console_errors: lines of the hypervisor log that mean a Xen bug.
xen_console_errors() {
    xen_log | grep -E 'Assertion .* failed|Xen BUG at|Xen WARN at|FATAL|Panic on CPU|Xen call trace' || true
}

# share_pages NAME DOMID REGION MODE N: nominate up to N gfns of REGION
# (zero|ident), THEN check their contents through a read-only mapping
# (MODE zero|same), THEN share the checked ones with the first (Debian's
# xen-memshare).  Sets SHARED, CHECKED, NOMINATED.
share_pages() {
    local name=$1 d=$2 region=$3 mode=$4 n=$5 gfns g h src src_h out
    local -A hs=()
    local -a ok
    SHARED=0 CHECKED=0 NOMINATED=0
    mapfile -t gfns < <(guest_gfns "$name" "$region" "$n")
    [ "${#gfns[@]}" -ge 2 ] || { xme_log "$region: only ${#gfns[@]} gfns reported"; return 1; }
    for g in "${gfns[@]}"; do
        h=$(nominate "$d" "$g") || { xme_log "nominate $g failed"; continue; }
        hs[$g]=$h
    done
    src=${gfns[0]} src_h=${hs[${gfns[0]}]:-}
    [ -n "$src_h" ] || { xme_log "$region: source gfn $src not nominated"; return 1; }
    if [ "$mode" = zero ]; then
        mapfile -t ok < <(xme-peek "$d" zero "${!hs[@]}")
    else
        mapfile -t ok < <(xme-peek "$d" same "$src" "${!hs[@]}")
    fi
    CHECKED=${#ok[@]} NOMINATED=${#hs[@]}
    for g in "${ok[@]}"; do
        [ "$g" = "$src" ] && continue
        if out=$(memshare share "$d" "0x$g" "${hs[$g]}" "$d" "0x$src" "$src_h" 2>&1); then
            SHARED=$((SHARED + 1))
        else
            xme_log "share $g -> $src: $out"
        fi
    done
    xme_log "$region: nominated $NOMINATED, contents ok $CHECKED, shared $SHARED"
}

# share_both NAME DOMID N CHECK: share_pages of the zero and the ident
# region (N gfns each, each region merged into its first page) and report
# CHECK: PASS when N-1 gfns of each were merged.  Sets SHARED_ALL (gfns
# merged away) and NOMINATED_ALL.
share_both() {
    local name=$1 d=$2 n=$3 check=$4 sz nz si ni
    share_pages "$name" "$d" zero zero "$n"; sz=$SHARED nz=$NOMINATED
    share_pages "$name" "$d" ident same "$n"; si=$SHARED ni=$NOMINATED
    SHARED_ALL=$((sz + si)) NOMINATED_ALL=$((nz + ni))
    if [ "$sz" = $((n - 1)) ] && [ "$si" = $((n - 1)) ]; then
        result "$check" PASS "$SHARED_ALL gfns merged into 2 shared pages"
    else
        result "$check" FAIL "shared zero=$sz ident=$si, want $((n - 1)) each"
    fi
}

# stop_xenpaging PID: SIGTERM (xenpaging pages everything back in, then
# exits), up to 60 s, then SIGKILL.  Sets XP_RC (exit status, or 'timeout')
# and XP_MS.
stop_xenpaging() {
    local pid=$1 t0
    t0=$(now_ms)
    kill -TERM "$pid" 2>/dev/null
    XP_RC=timeout
    for _ in $(seq 1 120); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid"; XP_RC=$?; break; }
        sleep 0.5
    done
    [ "$XP_RC" = timeout ] && kill -KILL "$pid" 2>/dev/null
    XP_MS=$(( $(now_ms) - t0 ))
}

# ------------------------------------------------------------------ our tools
# detach_both DOMID R: SIGINT to the pager and the watcher of attach_both;
# report the 'detach' check: both exit 0 and both rings are gone.
detach_both() {
    local d=$1 r=$2 prc wrc
    stop_tool "$P"; prc=$STOP_RC
    stop_tool "$W"; wrc=$STOP_RC
    if [ "$prc" = 0 ] && [ "$wrc" = 0 ] && wait_for 10 ring_absent "$d" SHARING_OOM && ring_absent "$d" SHARING_INVALIDATE; then
        result detach PASS "pager: $(grep '"kind":"summary"' "$r-pager.jsonl")"
    else
        result detach FAIL "pager rc=$prc watcher rc=$wrc; $(tail -n 2 "$r-pager.err" "$r-watch.err" | tr '\n' ' ')"
    fi
}
# attach_both DOMID R BATCH STEP_KIB: start our watcher (every record, JSON,
# BATCH records a notification) and our pager (allowance + STEP_KIB per
# event, JSON) on DOMID, their output in R-watch.jsonl and R-pager.jsonl
# (stderr: .err); wait for both rings to be connected and report the
# 'attach' check.  Sets W and P (the pids); returns 1 when not attached.
attach_both() {   # attach_both DOMID RUNPREFIX BATCH STEP_KIB [PAGER-ARGS... instead of --step]
    local d=$1 r=$2 batch=$3 step=$4
    shift 4
    [ $# -gt 0 ] || set -- --step "$step"
    xen-mem-event watch --domain "$d" --records --batch "$batch" --json > "$r-watch.jsonl" 2> "$r-watch.err" &
    W=$!
    xen-mem-event pager --domain "$d" --json "$@" > "$r-pager.jsonl" 2> "$r-pager.err" &
    P=$!
    if wait_for 20 ring_connected "$d" SHARING_OOM && wait_for 20 ring_connected "$d" SHARING_INVALIDATE; then
        result attach PASS "pager (pid $P) and watcher (pid $W) attached to d$d"
    else
        result attach FAIL "$(cat "$r-pager.err" "$r-watch.err" | tr '\n' ' ')"
        return 1
    fi
}
# jcount FILE KIND [PATTERN...]: JSON Lines of FILE with "kind":"KIND" and
# every PATTERN (fixed strings; keys are printed in sorted order).
jcount() {
    local f=$1 k=$2 p lines
    shift 2
    lines=$(grep -F "\"kind\":\"$k\"" "$f" 2>/dev/null)
    for p in "$@"; do lines=$(printf '%s\n' "$lines" | grep -F -- "$p"); done
    printf '%s' "$lines" | grep -c . || true
}
# jfield FILE KIND FIELD: FIELD of the last KIND line of FILE (numbers, bools).
jfield() {
    grep -F "\"kind\":\"$2\"" "$1" 2>/dev/null | tail -n 1 |
        sed -n "s/.*\"$3\":\"\{0,1\}\([^,\"}]*\).*/\1/p"
}
# ring_field DOMID TYPE FIELD: FIELD of the ring from 'xen-mem-event status --json'.
ring_field() {
    xen-mem-event status --domain "$1" --json 2>/dev/null | grep -F "\"type\":\"$2\"" |
        sed -n "s/.*\"$3\":\([^,}]*\).*/\1/p"
}
# wait_for TIMEOUT_S COMMAND...: poll COMMAND every 0.5 s until it succeeds.
wait_for() {
    local t=$1 deadline
    shift
    deadline=$(( $(date +%s) + t ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        "$@" && return 0
        sleep 0.5
    done
    return 1
}
ring_connected() { [ "$(ring_field "$1" "$2" connected)" = true ]; }
ring_absent() { ! xen-mem-event status --domain "$1" --json 2>/dev/null | grep -qF "\"type\":\"$2\""; }
# stop_tool PID [SIG]: send SIG (INT) to our child PID, wait for it; sets STOP_RC.
stop_tool() {
    local pid=$1 sig=${2:-INT} i
    kill -"$sig" "$pid" 2>/dev/null
    for i in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    wait "$pid"
    STOP_RC=$?
}

# ------------------------------------------------------------------ scenarios
# result CHECK PASS|FAIL DETAILS: xme_result, remembering failures in $fail
# (the scenario's exit status: 'exit $fail').
fail=0
result() { xme_result "$@"; [ "$2" = PASS ] || fail=1; }

# replay_results FILE: report the results held back in FILE (XME_DEFER).
replay_results() {
    local check verdict details
    [ -f "$1" ] || return 0
    while read -r check verdict details; do
        xme_result "$check" "$verdict" "$details"
    done < "$1"
}

# attempt_void FILE RC ERRS0 [silent]: whether a run whose results were
# held back in FILE, and that exited RC, is void: it failed, a guest died
# under it (crashed or vanished; with 'silent', also stopped answering:
# guest_cmd notes these in $XME_RUN/NAME.died), no guest's memtest reported
# bad data, and the hypervisor reported no error beyond the ERRS0 lines of
# xen_console_errors it had reported before.  Prints why.
attempt_void() {
    local file=$1 rc=$2 errs0=$3 re='crashed or gone|not running' f n why=''
    [ "${4:-}" = silent ] && re="$re|silent"
    [ "$rc" != 0 ] || grep -q '^[^ ]* FAIL' "$file" 2>/dev/null || return 1
    for f in "$XME_RUN"/*.died; do
        [ -f "$f" ] && grep -qE "$re" "$f" || continue
        n=$(basename "$f" .died)
        grep -qE '^MEMTEST (FAIL|BAD)' "$(guest_log "$n")" 2>/dev/null && return 1
        why="$why guest $n: $(paste -sd ';' "$f");"
    done
    [ -n "$why" ] || return 1
    [ "$(xen_console_errors | wc -l)" = "$errs0" ] || return 1
    echo "$why"
}

# retry_if_guest_died NAME FUNCTION: run FUNCTION (a scenario's body, in a
# subshell: it may exit) with its results held back.  If the attempt is
# void (attempt_void, silence included: guest NAME stopped answering), its
# results are logged, not reported, and FUNCTION runs once more, its
# results reported (to run.sh's held-back file).  Otherwise its results are reported as they were.  Returns
# FUNCTION's status.
#
# For compat-paging: under QEMU TCG a guest with part of its memory paged
# out by xenpaging dies or hangs now and then (about 1 run in 8: triple
# faults, oopses, silence), in Xen's paging code, which the series does
# not touch, and xenpaging.  (run.sh gives every scenario one more run when
# a guest crashed or vanished; silence is voided only here.)  A second
# death fails the check.
retry_if_guest_died() {
    local name=$1 body=$2 defer=$XME_RUN/$XME_SCENARIO.attempt1 rc errs0 why
    rm -f "$defer" "$XME_RUN/$name.died"
    errs0=$(xen_console_errors | wc -l)
    (XME_DEFER=$defer "$body")
    rc=$?
    if ! why=$(attempt_void "$defer" "$rc" "$errs0" silent); then
        replay_results "$defer"
        return "$rc"
    fi
    xme_log "VOID ATTEMPT:$why its results, not counted:"
    sed "s/^/[xme $XME_SCENARIO]   attempt 1: /" "$defer"
    guest_destroy "$name"
    rm -f "$XME_RUN/$name.died"
    xme_log "running the scenario once more, with a new guest"
    ("$body")
}

# boot_guest NAME [MEMTEST_ARGS]: guest_create with its guest-boot result;
# ends the scenario if the guest does not come up.  Sets D.
boot_guest() {
    if ! guest_create "$@"; then
        result guest-boot FAIL "no MEMTEST READY after 4 attempts"
        exit 1
    fi
    D=$GUEST_DOMID
    result guest-boot PASS "domid=$D"
}

# memtest_check CHECK NAME COMMAND TIMEOUT_S: send COMMAND to the guest's
# memtest; CHECK passes iff it answers MEMTEST PASS.
memtest_check() {
    local line
    line=$(guest_cmd "$2" "$3" "$4") || line="(no answer)"
    case "$line" in
    "MEMTEST PASS "*) result "$1" PASS "${line#MEMTEST }" ;;
    *) result "$1" FAIL "$line" ;;
    esac
}

# cap_allowance DOMID [EXTRA_KIB]: pause, allowance := what the domain owns
# (+ EXTRA_KIB), unpause: every unshare that needs a copy then fails.
cap_allowance() {
    local tot max
    xl pause "$1"
    read -r tot max < <(xme-mem "$1" cap "${2:-0}")
    xl unpause "$1"
    xme_log "d$1: allowance capped at $max KiB (owns $tot KiB)"
}

# ------------------------------------------------------------------ the sharing daemon
# free_mib: the host's free memory (xl info free_memory), MiB.
free_mib() { xl info 2>/dev/null | awk '$1 == "free_memory" {print $3}'; }
# sfield FILE FIELD: FIELD of the last status line ("interval") of
# 'xen-mem-event share --json' output FILE.
sfield() { jfield "$1" interval "$2"; }
# share_settle FILE TIMEOUT_S: wait until the daemon (JSON in FILE) has
# completed two full scans in a row between which pages_sharing moved by
# at most 16 pages (the guests' kernels keep writing a few pages); prints
# that pages_sharing.  Fails on timeout.
share_settle() {
    local f=$1 t=$2 deadline fs ps last_fs=-1 last_ps=-1000000
    deadline=$(( $(date +%s) + t ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        fs=$(sfield "$f" full_scans) ps=$(sfield "$f" pages_sharing)
        if [ -n "$fs" ] && [ -n "$ps" ] && [ "$fs" != "$last_fs" ]; then
            if [ "$fs" -ge 2 ] && [ $((ps - last_ps)) -le 16 ] && [ $((last_ps - ps)) -le 16 ]; then
                echo "$ps"
                return 0
            fi
            last_fs=$fs last_ps=$ps
        fi
        sleep 1
    done
    return 1
}
# share_series FILE: the daemon's status lines as a compact table (time,
# share attempts, stale-handle failures, pages sharing by its table, Xen's
# pages freed).
share_series() {
    awk '
        function f(k) {
            if (match($0, "\"" k "\":[0-9.]+"))
                return substr($0, RSTART + length(k) + 3, RLENGTH - length(k) - 3)
            return 0
        }
        /"kind":"interval"/ {
            printf "      t=%6.1fs attempts=%-6d stale=%-5d sharing=%-6d xen_saved=%d\n",
                f("t"), f("share_attempts"), f("stale_source") + f("stale_client"),
                f("pages_sharing"), f("host_saved")
        }' "$1"
}

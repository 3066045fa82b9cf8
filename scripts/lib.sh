# shellcheck shell=bash
# shellcheck disable=SC2034 # VM_* and HB_* are read by the scripts that source this
# Shared by scripts/run-qemu.sh and scripts/run-ch.sh (sourced, not run).
#
# It owns the part of a boot that does not depend on the VMM: run the VMM with
# serial going to a file, stream that file to stdout, enforce the timeout
# (always: a hung guest must not hang the caller), and read the guest's verdict
# from its `HB {"event":"exit","status":N}` line.

# The shape of every machine-readable serial line: `HB ` and one JSON object.
# Spaces after `:` are allowed so that the scripts do not depend on how the
# kernel formats its JSON.
HB_EXIT_RE='^HB \{.*"event" *: *"exit"'
HB_BOOT_RE='^HB \{.*"event" *: *"boot"'

hb_say() { echo "${HB_TOOL:-hb}: $*" >&2; }

# Microseconds since the epoch, without forking.
hb_now_us() { echo "${EPOCHREALTIME/./}"; }

# Prints the last N lines of a serial log to stderr with a header, for the
# failure paths.
hb_tail() {
    local serial="$1" n="${2:-40}"
    hb_say "---- last $n serial lines ----"
    if [[ -s "$serial" ]]; then
        tail -n "$n" "$serial" | tr -d '\r' >&2
    else
        echo "(the guest printed nothing on serial)" >&2
    fi
    hb_say "---- end of serial ----"
}

# The status N of the last `HB {"event":"exit","status":N}` line, or nothing.
hb_exit_status() {
    tr -d '\r' <"$1" | grep -aE "$HB_EXIT_RE" | tail -n 1 |
        sed -nE 's/.*"status" *: *(-?[0-9]+).*/\1/p' || true
}

# A command line as a person would type it (quotes only where needed).
hb_show() {
    local a out=""
    for a in "$@"; do
        if [[ "$a" =~ ^[A-Za-z0-9_./:=,+@%-]+$ ]]; then
            out+="$a "
        else
            out+="'${a//\'/\'\\\'\'}' "
        fi
    done
    echo "${out% }"
}

# The count of lines in a file matching an extended regex (0 when none).
hb_count() {
    local n
    n="$(tr -d '\r' <"$1" | grep -acE "$2" || true)"
    echo "${n:-0}"
}

# vm_run TIMEOUT SERIAL STREAM WATCH_RE WATCH_COUNT -- COMMAND...
#
# Runs COMMAND (a VMM that writes the guest's serial to SERIAL) in the
# background. STREAM=1 copies SERIAL to stdout as it grows. Stops the VMM when
# TIMEOUT seconds pass (0: never) or, if WATCH_RE is set, once SERIAL holds
# WATCH_COUNT lines matching it. Optional settings, for VMMs whose serial is
# their stdout and whose own complaints are worth watching (cloud-hypervisor):
#   VM_STDOUT=FILE       append COMMAND's stdout to FILE
#   VM_STDERR=FILE       copy COMMAND's stderr to FILE (it still reaches stderr)
#   VM_STDERR_STOP_RE=RE stop the VMM once VM_STDERR has a line matching RE
# Sets:
#   VM_RC        the VMM's exit status (when it ended by itself)
#   VM_TIMED_OUT 1 if the timeout stopped it
#   VM_WATCHED   1 if WATCH_RE or VM_STDERR_STOP_RE stopped it
#   VM_SECONDS   wall time, e.g. 1.23
vm_run() {
    local timeout="$1" serial="$2" stream="$3" watch_re="$4" watch_count="$5"
    shift 6
    local start deadline=0 tail_pid=""
    VM_RC=0
    VM_TIMED_OUT=0
    VM_WATCHED=0
    start="$(hb_now_us)"
    ((timeout > 0)) && deadline=$((start + timeout * 1000000))

    [[ -n "${VM_STDERR:-}" ]] && : >>"$VM_STDERR"
    if [[ -n "${VM_STDOUT:-}" && -n "${VM_STDERR:-}" ]]; then
        "$@" </dev/null >>"$VM_STDOUT" 2> >(tee -a "$VM_STDERR" >&2) &
    elif [[ -n "${VM_STDOUT:-}" ]]; then
        "$@" </dev/null >>"$VM_STDOUT" &
    elif [[ -n "${VM_STDERR:-}" ]]; then
        "$@" </dev/null 2> >(tee -a "$VM_STDERR" >&2) &
    else
        "$@" </dev/null &
    fi
    VM_PID=$!
    if ((stream)); then
        # -s 0.1: tail notices the VMM's exit (--pid) within 0.1 s, and prints
        # what is left in the file before it quits. sed -u, not tr: tr
        # buffers its output when it writes to a pipe, so a reader (bench.sh's
        # progress lines) got the guest's lines in bursts, long after.
        tail -n +1 -s 0.1 -f --pid="$VM_PID" "$serial" 2>/dev/null | sed -u 's/\r//g' &
        tail_pid=$!
    fi

    while kill -0 "$VM_PID" 2>/dev/null; do
        if ((deadline)) && (($(hb_now_us) >= deadline)); then
            VM_TIMED_OUT=1
            break
        fi
        if [[ -n "$watch_re" ]] && (($(hb_count "$serial" "$watch_re") >= watch_count)); then
            VM_WATCHED=1
            break
        fi
        if [[ -n "${VM_STDERR_STOP_RE:-}" ]] && (($(hb_count "$VM_STDERR" "$VM_STDERR_STOP_RE") > 0)); then
            VM_WATCHED=1
            break
        fi
        sleep 0.1
    done
    if ((VM_TIMED_OUT || VM_WATCHED)); then
        vm_kill "$VM_PID"
        wait "$VM_PID" 2>/dev/null || true
    else
        wait "$VM_PID" && VM_RC=0 || VM_RC=$?
    fi
    VM_PID=""
    if [[ -n "$tail_pid" ]]; then
        wait "$tail_pid" 2>/dev/null || true
    fi
    local us=$(($(hb_now_us) - start))
    VM_SECONDS="$((us / 1000000)).$(printf '%02d' $((us % 1000000 / 10000)))"
}

# Stops a VMM: SIGTERM first (QEMU and cloud-hypervisor both exit cleanly on
# it), SIGKILL if it is still there 3 s later.
vm_kill() {
    local pid="$1" i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 30; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

# Ctrl-C or a TERM from a test runner must not leave a VMM behind, and the
# caller learns which signal ended the run: 128 + its number, as a shell
# reports a command killed by it.
vm_on_signal() {
    local name="$1" number="$2"
    if [[ -n "${VM_PID:-}" ]]; then
        hb_say "STOPPED by SIG$name; stopping the VM (pid $VM_PID); the guest did not finish"
        vm_kill "$VM_PID"
    else
        hb_say "STOPPED by SIG$name"
    fi
    exit $((128 + number))
}
trap 'vm_on_signal INT 2' INT
trap 'vm_on_signal TERM 15' TERM

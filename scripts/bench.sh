#!/usr/bin/env bash
# Runs hyperbatch's benchmarks (run=bench) and turns the boots' serial logs
# into a results directory: report.md, SVG plots, results.json, results.csv,
# benchmark.json, host.json and every boot's serial log (tools/hbreport;
# docs/results-schema.md describes the files).
#
#   scripts/bench.sh [options] [-- EXTRA CMDLINE...]
#
# By default a run is one counting boot, then N timed boots:
#   - the counting boot runs under QEMU icount (TCG, single-threaded): the
#     guest's clock advances by one per guest instruction, so its figures are
#     exact instruction counts, the same in every boot;
#   - the timed boots measure TSC cycles; each timed figure is the median
#     across them, with its spread.
# A full run (not --quick) then boots the same kinds again at --extra-smp
# vCPUs (16) with only the smp and scale suites, so that shootdowns and
# concurrent mm calls are measured up to 16 vCPUs without every suite there
# (a whole benchmark at 16 vCPUs took 288 s of counting boot against 54 s at
# 4). On a 2-core development machine they add about 90 s to a full run's
# 50 s of boots: 72 s of counting boot (most of it bringing 16 vCPUs up under
# icount: run=boot alone takes 49 s there, 3.5 s at 4 vCPUs) and 5 s per
# timed boot. Their logs are
# serial-{count,timed}-smp16-N.log; their figures' ids end in /smp=16, apart
# from the run's own.
#
#   --runs N           timed boots (default 3; 1 with --quick, whose figures
#                      are for checking the pipeline, not for quoting); with
#                      --icount, counting boots (default 1)
#   --icount           counting boots only (no timed boot)
#   --timed            timed boots only (no counting boot; what --ch and
#                      --accel kvm imply, since only TCG can count)
#   --quick            the guest's quick mode (fewer pages and repetitions);
#                      also makes hbreport strict and checks that every suite
#                      reported, the workload checksums match and every
#                      counted figure is the same in every counting boot
#   --ch [PATH]        boot under cloud-hypervisor (scripts/run-ch.sh) instead
#                      of QEMU; PATH is its binary (default: $CLOUD_HYPERVISOR,
#                      else cloud-hypervisor on PATH)
#   --smp N            vCPUs (default 4: the smp suite goes up to all of them)
#   --extra-smp N      the vCPUs of a full run's extra smp,scale boots
#                      (default 16; 0, or no more than --smp: none); with a
#                      suite= list they run the smp and scale it names, if any
#                      (with HB_TCG_THREAD=multi on a small host, 0 avoids 16
#                      vCPU threads waiting on each other's time slices)
#   --machine M        QEMU machine: microvm, pc or q35 (default microvm)
#   --accel A          the timed boots' accelerator: auto, tcg or kvm (default
#                      auto, which picks TCG on hosts whose KVM interprets
#                      ring 0); under TCG they run single-threaded unless
#                      HB_TCG_THREAD=multi (one host thread per vCPU, whose
#                      figures then depend on how busy the host is)
#   --mem SIZE         guest RAM, e.g. 512M or 1G (default 512M)
#   --timeout SECONDS  stop a boot after this long (default 1800; 600 with
#                      --quick)
#   --kernel PATH      boot this ELF instead of building one
#   --out DIR          the results directory (default
#                      results/<UTC date>-<machine>-smp<N>[-quick], or
#                      results/<UTC date>-fromlog with --from-log)
#   --from-log PATH    do not boot: report on serial logs saved earlier; PATH
#                      is a log or a results directory (its serial-*.log and
#                      host.json); repeat it for several logs
#   --verbose          also stream the guest's serial console to stderr
#   -- EXTRA...        more kernel command line, e.g. -- suite=mm
#
# Examples:
#   scripts/bench.sh                        the full run (about 2.5 minutes of boots)
#   scripts/bench.sh --quick                a short run (what CI checks)
#   scripts/bench.sh --icount --quick       counting only: the same figures every time
#   scripts/bench.sh --quick -- suite=mm    one suite
#   scripts/bench.sh --runs 5 --smp 2       more timed boots, fewer vCPUs
#   scripts/bench.sh --from-log results/X   a new report from X's logs (--out results/X: in place)
#
# While a boot runs, a progress line on stderr says which boot and suite
# runs, with the wall-clock time since the run began and the guest's own
# time (or, counting, its instructions). At the end the report's path is
# printed on stdout.
#
# Exit status: 0 every guest succeeded and the report was made (and, with
# --quick, checked); 1 the report could not be made or a check failed; 2 bad
# usage; else the first failed boot's status (the guest's failure status,
# 124 timeout, 125 no exit record, 126 the VMM failed); with --from-log, a
# log's guest failure status, or 125 for a log without an exit record. A
# failed run's directory holds its logs and a FAILED file saying why, and no
# report.md unless some boot printed figures; bench.sh's own directory names
# then end in -FAILED.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HB_TOOL=bench
# shellcheck source=scripts/lib.sh
source "$root/scripts/lib.sh"

quick=0
runs=""
mode=both
vmm=qemu
ch_path=""
smp=4
extra_smp=16
machine=microvm
accel=auto
mem=512M
timeout=""
kernel=""
out=""
from_logs=()
verbose=0
extra=()

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
bad() {
    hb_say "$*"
    exit 2
}
need() { [[ $# -ge 2 && -n "$2" ]] || bad "$1 needs a value (see --help)"; }
# Paths given on the command line are the caller's: resolve them before the
# script changes into the repository.
abs() { [[ "$1" == /* ]] && echo "$1" || echo "$PWD/$1"; }
while (($#)); do
    case "$1" in
    --smp | --extra-smp | --machine | --accel | --mem | --timeout | --kernel | --out | --from-log | --runs)
        need "$@"
        case "$1" in
        --smp) smp="$2" ;;
        --extra-smp) extra_smp="$2" ;;
        --machine) machine="$2" ;;
        --accel) accel="$2" ;;
        --mem) mem="$2" ;;
        --timeout) timeout="$2" ;;
        --kernel) kernel="$(abs "$2")" ;;
        --out) out="$(abs "$2")" ;;
        --from-log) from_logs+=("$(abs "$2")") ;;
        --runs) runs="$2" ;;
        esac
        shift 2
        ;;
    --ch)
        vmm=ch
        # The path is optional: take the next word unless it is an option.
        if [[ $# -ge 2 && -n "$2" && "$2" != -* ]]; then
            ch_path="$(abs "$2")"
            shift
        fi
        shift
        ;;
    --icount)
        [[ "$mode" == timed ]] && bad "--icount and --timed exclude each other"
        mode=count && shift
        ;;
    --timed)
        [[ "$mode" == count ]] && bad "--icount and --timed exclude each other"
        mode=timed && shift
        ;;
    --quick) quick=1 && shift ;;
    --verbose) verbose=1 && shift ;;
    -h | --help) usage && exit 0 ;;
    --)
        shift
        extra=("$@")
        break
        ;;
    *) bad "unknown option '$1' (the kernel command line goes after --; see --help)" ;;
    esac
done

# ---- every option is checked here, before anything is built ----
[[ "$smp" =~ ^[1-9][0-9]{0,3}$ ]] || bad "--smp must be a number from 1 to 9999, not '$smp'"
[[ "$extra_smp" =~ ^(0|[1-9][0-9]{0,3})$ ]] || bad "--extra-smp must be a number from 0 to 9999, not '$extra_smp'"
case "$machine" in microvm | pc | q35) ;; *) bad "--machine must be microvm, pc or q35, not '$machine'" ;; esac
case "$accel" in auto | tcg | kvm) ;; *) bad "--accel must be auto, tcg or kvm, not '$accel'" ;; esac
[[ "$mem" =~ ^[1-9][0-9]{0,6}[KMGT]?$ ]] || bad "--mem must look like 512M or 1G, not '$mem'"
if [[ -z "$timeout" ]]; then
    timeout=1800
    ((quick)) && timeout=600
fi
# A week at most: beyond that the shell's arithmetic on microseconds
# overflows, and no benchmark boot takes a week.
[[ "$timeout" =~ ^[1-9][0-9]{0,5}$ && "$timeout" -le 604800 ]] ||
    bad "--timeout must be whole seconds from 1 to 604800, not '$timeout'"
if [[ -n "$runs" ]]; then
    [[ "$runs" =~ ^[1-9][0-9]?$ ]] || bad "--runs must be a number from 1 to 99, not '$runs'"
fi
if [[ "$vmm" == ch || "$accel" == kvm ]]; then
    what="--accel kvm"
    [[ "$vmm" == ch ]] && what="--ch"
    [[ "$mode" == count ]] && bad "--icount needs QEMU TCG (it counts instructions only when it translates them); $what cannot count"
fi
if [[ "$vmm" == ch ]]; then
    [[ "$machine" != microvm ]] && bad "--machine is a QEMU option; cloud-hypervisor has one machine"
    [[ "$accel" == tcg ]] && bad "--accel tcg is a QEMU option; cloud-hypervisor runs on KVM"
    ch_bin="${ch_path:-${CLOUD_HYPERVISOR:-}}"
    if [[ -z "$ch_bin" ]]; then
        ch_bin="$(command -v cloud-hypervisor || true)"
        [[ -n "$ch_bin" ]] || bad "--ch: no cloud-hypervisor on PATH and no \$CLOUD_HYPERVISOR; give its path: --ch PATH"
    fi
    [[ -f "$ch_bin" && -x "$ch_bin" ]] || bad "--ch: '$ch_bin' is not an executable file"
fi
if [[ ("$vmm" == ch || "$accel" == kvm) && "$mode" == both ]]; then
    # Only TCG counts: a KVM or cloud-hypervisor run is timed only.
    hb_say "$what: timed boots only (counting needs QEMU TCG)"
    mode=timed
fi
# The timed boots run single-threaded TCG unless HB_TCG_THREAD=multi asks
# otherwise. With one host thread per vCPU, every cross-vCPU wait (a
# shootdown's acknowledgement) lasts until the host schedules the other
# thread: on a busy 2-core machine one boot's workload suite took 385 s
# instead of 3, and the figures measured the host's scheduler. One thread
# gives figures that do not depend on how many cores the host has or how
# busy they are; host.json records the choice.
tcg_thread="${HB_TCG_THREAD:-single}"
case "$tcg_thread" in single | multi) ;; *) bad "HB_TCG_THREAD must be single or multi, not '$tcg_thread'" ;; esac
# An existing --out must be a results directory (its files are replaced) or
# empty: never clear the .svg and .log files of some other directory.
if [[ -n "$out" && -e "$out" ]]; then
    [[ -d "$out" ]] || bad "--out: '$out' exists and is not a directory"
    if [[ -n "$(ls -A "$out")" && ! -e "$out/report.md" && ! -e "$out/host.json" && ! -e "$out/FAILED" ]]; then
        bad "--out: '$out' is neither empty nor a results directory (no report.md, host.json or FAILED); choose a new directory"
    fi
fi
if [[ -n "$kernel" && ! -f "$kernel" ]]; then
    bad "--kernel: no file '$kernel'"
fi
# --from-log: every log readable, a directory's logs and host.json found.
logs_in=()
host_in=""
for f in "${from_logs[@]}"; do
    if [[ -d "$f" ]]; then
        found=0
        for l in "$f"/serial-*.log "$f"/serial.log; do
            [[ -f "$l" ]] || continue
            logs_in+=("$l")
            found=1
        done
        ((found)) || bad "--from-log: the directory '$f' holds no serial-*.log or serial.log"
        [[ -f "$f/host.json" ]] && host_in="$f/host.json"
    elif [[ -r "$f" && -f "$f" ]]; then
        logs_in+=("$f")
        # A log of a results directory: its host.json describes it.
        if [[ -z "$host_in" && "$(basename "$f")" == serial-*.log && -f "$(dirname "$f")/host.json" ]]; then
            host_in="$(dirname "$f")/host.json"
        fi
    else
        bad "--from-log: cannot read '$f'"
    fi
done
if ((${#logs_in[@]})); then
    [[ ${#extra[@]} -eq 0 ]] || bad "--from-log does not boot, so a kernel command line (after --) has nothing to apply to"
fi
for w in "${extra[@]}"; do
    [[ "$w" =~ ^[A-Za-z0-9_.,:=/-]+$ ]] || bad "the kernel command line word '$w' has characters the kernel does not accept"
done
if [[ -z "$runs" ]]; then
    if [[ "$mode" == count ]] || ((quick)); then runs=1; else runs=3; fi
fi
# The extra boots of a full run: the smp and scale suites at --extra-smp
# vCPUs, or those of them a suite= list names. Everything else on the
# command line goes with them.
extra_suites=""
extra_rest=()
if ((!quick && extra_smp > smp && ${#logs_in[@]} == 0)); then
    wanted=(smp scale)
    for w in "${extra[@]}"; do
        if [[ "$w" == suite=* ]]; then
            wanted=()
            IFS=, read -r -a asked <<<"${w#suite=}"
            for a in "${asked[@]}"; do
                [[ "$a" == smp || "$a" == scale ]] && wanted+=("$a")
            done
        else
            extra_rest+=("$w")
        fi
    done
    extra_suites="$(
        IFS=,
        echo "${wanted[*]}"
    )"
fi
counting=0
timed=0
case "$mode" in
count) counting="$runs" ;;
timed) timed="$runs" ;;
both)
    counting=1
    timed="$runs"
    ;;
esac

label="$machine"
[[ "$vmm" == ch ]] && label=ch
((${#logs_in[@]})) && label=fromlog

cd "$root"

# ---- the report tool (small; built first so a broken build fails fast) ----
hb_say "building tools/hbreport"
if ! cargo +nightly build -q -p hbreport; then
    hb_say "FAILED: tools/hbreport did not build (cargo's errors are above)"
    exit 1
fi
target_dir="${CARGO_TARGET_DIR:-$root/target}"
[[ "$target_dir" == /* ]] || target_dir="$root/$target_dir"
hbreport="$target_dir/debug/hbreport"

# ---- the results directory ----
# Everything is written into a staging directory beside the final one and
# moved into place at the end, so a run that fails never leaves something
# that looks like a finished results directory.
chose_name=0
if [[ -z "$out" ]]; then
    suffix=""
    ((quick)) && suffix="-quick"
    out="$root/results/$(date -u +%Y%m%d-%H%M%S)-${label}-smp${smp}${suffix}"
    # Saved logs say their own vCPUs; the name does not guess them.
    ((${#logs_in[@]})) && out="$root/results/$(date -u +%Y%m%d-%H%M%S)-fromlog"
    chose_name=1
fi
mkdir -p "$(dirname "$out")"
stage="$(mktemp -d "$(dirname "$out")/.$(basename "$out").partial.XXXXXX")"
cleanup_stage() {
    if [[ -n "${stage:-}" && -d "$stage" ]]; then rm -rf "$stage"; fi
    return 0
}
trap 'cleanup_stage; vm_on_signal' INT TERM
trap cleanup_stage EXIT
run_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
started_us="$(hb_now_us)"

# The files bench.sh writes: cleared from an existing --out before the new
# ones move in, so no earlier run's boot survives into this report.
ARTEFACTS=(report.md results.json results.csv benchmark.json host.json FAILED 'serial-*.log' 'run-*.log' '*.svg' serial.log run.log)

# Moves the staged files into $1 (created if missing).
publish() {
    local dest="$1" f
    mkdir -p "$dest"
    for f in "${ARTEFACTS[@]}"; do
        # shellcheck disable=SC2086 # the globs are meant
        (cd "$dest" && rm -f -- $f)
    done
    mv "$stage"/* "$dest"/ 2>/dev/null || true
    rm -rf "$stage"
}

# Marks the run failed: the logs and a FAILED file, no report unless one was
# made, in $out (given by the caller) or <name>-FAILED (chosen here).
fail() {
    local rc="$1"
    shift
    hb_say "FAILED: $*"
    echo "$*" >"$stage/FAILED"
    local dest="$out"
    if ((chose_name)); then
        dest="${out}-FAILED"
    fi
    publish "$dest"
    hb_say "the logs are in $dest"
    exit "$rc"
}

# Reads the guest's serial stream on stdin and prints, each on its own
# line, where the run is: the boot, the suite, wall-clock time since the run
# began and the guest's own time (instructions, when counting).
show_progress() {
    local tag="$1" kind="$2" line suite state secs figures=0 re_p re_s wall guest
    re_p='"event" *: *"progress"'
    re_s='"suite" *: *"([^"]*)".*"state" *: *"([^"]*)"'
    say_progress() {
        wall=$((($(hb_now_us) - started_us) / 1000000))
        hb_say "[wall ${wall} s] $tag: $1"
    }
    say_progress "booting"
    while IFS= read -r line; do
        line="${line%$'\r'}"
        if [[ "$line" == "HB "* ]]; then
            if [[ "$line" =~ $re_p ]] && [[ "$line" =~ $re_s ]]; then
                suite="${BASH_REMATCH[1]}"
                state="${BASH_REMATCH[2]}"
                if [[ "$state" == start ]]; then
                    say_progress "suite $suite running ($figures figures so far)"
                else
                    secs="$(sed -nE 's/.*"seconds" *: *([0-9.]+).*/\1/p' <<<"$line")"
                    guest=""
                    if [[ -n "$secs" ]]; then
                        if [[ "$kind" == count ]]; then
                            # Under icount the guest's clock runs at 1 GHz of
                            # instructions: its seconds are 1e9 instructions.
                            guest=", $(awk -v s="$secs" 'BEGIN { printf "%.1f", s * 1000 }') M guest instructions"
                        else
                            guest=", $(printf '%.1f' "$secs") s of guest time"
                        fi
                    fi
                    say_progress "suite $suite done$guest ($figures figures so far)"
                fi
            elif [[ "$line" =~ \"event\"\ *:\ *\"result\" ]]; then
                figures=$((figures + 1))
            elif [[ "$line" =~ \"event\"\ *:\ *\"exit\" ]]; then
                say_progress "guest finished ($figures figures)"
            fi
        elif ((verbose)); then
            echo "$line" >&2
        fi
    done
    return 0
}

# The guest's own error lines in a serial log, for the failure message.
guest_errors() {
    tr -d '\r' <"$1" | grep -aE '^\[cpu[0-9]+\] ERROR |^!!! ' | head -n 5 || true
}

# ---- the boots ----
logs=()
vmm_rc=0
if ((${#logs_in[@]})); then
    for f in "${logs_in[@]}"; do
        name="$(basename "$f")"
        [[ -e "$stage/$name" ]] && name="$(basename "$(dirname "$f")")-$name"
        cp -- "$f" "$stage/$name"
        logs+=("$stage/$name")
        # Its run log says how QEMU ran it (hbreport reads the TCG
        # threading from it); it keeps its serial log's name.
        run_in="$(dirname "$f")/$(basename "$f" | sed 's/^serial-/run-/')"
        if [[ "$(basename "$f")" == serial-* && -f "$run_in" ]]; then
            cp -- "$run_in" "$stage/${name/serial-/run-}"
        fi
    done
    [[ -n "$host_in" ]] && cp -- "$host_in" "$stage/host.json"
    hb_say "no boot: reporting on ${#logs[@]} saved log(s)${host_in:+ and their host.json}"
else
    if [[ -z "$kernel" ]]; then
        if ! kernel="$(scripts/build.sh)"; then
            fail 1 "the kernel did not build (the build's errors are above)"
        fi
    fi
    cmdline=(run=bench)
    ((quick)) && cmdline+=(quick)
    cmdline+=("${extra[@]}")
    total=$((counting + timed))
    [[ -n "$extra_suites" ]] && total=$((total * 2))
    i=0
    # boot_one KIND N [VCPUS TAG CMDLINE...]: one boot; the extra boots
    # give their vCPUs, a tag for the log names and their command line.
    boot_one() {
        local kind="$1" n="$2" vcpus="${3:-$smp}" tag="${4:-}" serial runlog rc run
        local words=("${cmdline[@]}")
        (($# > 4)) && words=("${@:5}")
        i=$((i + 1))
        serial="$stage/serial-$kind$tag-$n.log"
        runlog="$stage/run-$kind$tag-$n.log"
        if [[ "$vmm" == ch ]]; then
            run=(scripts/run-ch.sh --ch "$ch_bin" --smp "$vcpus" --mem "$mem")
        else
            run=(scripts/run-qemu.sh --machine "$machine" --smp "$vcpus" --mem "$mem")
            if [[ "$kind" == count ]]; then
                run+=(--icount)
            else
                run+=(--accel "$accel")
            fi
        fi
        run+=(--kernel "$kernel" --timeout "$timeout" --log "$serial" -- "${words[@]}")
        hb_say "boot $i/$total ($([[ "$kind" == count ]] && echo counting || echo timed)): $(hb_show "${run[@]}")"
        # The VMM script's messages go to stderr and into run-*.log; its
        # stdout is the serial stream, which feeds the progress lines.
        set +e
        if [[ "$kind" == count ]]; then
            env -u HB_TCG_THREAD "${run[@]}" 2> >(tee "$runlog" >&2) |
                show_progress "boot $i/$total (counting)" count
        else
            HB_TCG_THREAD="$tcg_thread" "${run[@]}" 2> >(tee "$runlog" >&2) |
                show_progress "boot $i/$total (timed)" timed
        fi
        rc=${PIPESTATUS[0]}
        set -e
        logs+=("$serial")
        # run-qemu.sh names the accelerator it chose in its closing line:
        # "guest exit status 0 (isa-debug-exit, tcg, 12.34 s)". Later timed
        # boots use the same one.
        if [[ "$kind" == timed && "$accel" == auto ]]; then
            sleep 0.2 # let tee finish writing the run log
            local chosen
            chosen="$(sed -nE 's/.*guest exit status .*, (tcg|kvm), [0-9.]+ s\)$/\1/p' "$runlog" | tail -n 1)"
            [[ -n "$chosen" ]] && accel="$chosen"
        fi
        return "$rc"
    }
    for ((n = 1; n <= counting; n++)); do
        boot_one count "$n" || vmm_rc=$?
        ((vmm_rc == 0)) || break
    done
    if ((vmm_rc == 0)); then
        for ((n = 1; n <= timed; n++)); do
            boot_one timed "$n" || vmm_rc=$?
            ((vmm_rc == 0)) || break
        done
    fi
    if [[ -n "$extra_suites" ]] && ((vmm_rc == 0)); then
        wide=(run=bench suite="$extra_suites" "${extra_rest[@]}")
        hb_say "the extra boots: suite=$extra_suites at $extra_smp vCPUs"
        for ((n = 1; n <= counting && vmm_rc == 0; n++)); do
            boot_one count "$n" "$extra_smp" "-smp$extra_smp" "${wide[@]}" || vmm_rc=$?
        done
        for ((n = 1; n <= timed && vmm_rc == 0; n++)); do
            boot_one timed "$n" "$extra_smp" "-smp$extra_smp" "${wide[@]}" || vmm_rc=$?
        done
    fi
    [[ "$vmm" == ch ]] && accel=kvm
    host_args=(--out "$stage/host.json" --vmm "$([[ "$vmm" == ch ]] && echo cloud-hypervisor || echo qemu)"
        --smp "$smp" --mem "$mem" --date "$run_date" --repo "$root" --machine "$label")
    [[ "$vmm" == ch ]] && host_args+=(--vmm-binary "$ch_bin")
    ((timed)) && host_args+=(--accel "$accel")
    ((timed)) && [[ "$accel" == tcg ]] && host_args+=(--tcg-thread "$tcg_thread")
    "$hbreport" host "${host_args[@]}" >/dev/null
    if ((vmm_rc != 0)); then
        last="${logs[${#logs[@]} - 1]}"
        hb_say "boot ${#logs[@]} failed (status $vmm_rc); its serial log is $(basename "$last")"
        msg=""
        [[ -f "$last" ]] && msg="$(guest_errors "$last")"
        if [[ -n "$msg" ]]; then
            hb_say "the guest said:"
            sed 's/^/    /' <<<"$msg" >&2
        fi
    fi
fi

# ---- the report ----
have_figures=0
for l in "${logs[@]}"; do
    [[ -f "$l" ]] || continue
    if (($(hb_count "$l" '^HB \{.*"event" *: *"result"') > 0)); then
        have_figures=1
    fi
done
if ((!have_figures)); then
    why="no boot printed a figure"
    for l in "${logs[@]}"; do
        [[ -f "$l" ]] || continue
        msg="$(guest_errors "$l" | head -n 1)"
        if [[ -n "$msg" ]]; then
            why+="; the guest said: $msg"
            break
        elif [[ ! -s "$l" ]]; then
            why+="; $(basename "$l") is empty"
            break
        fi
    done
    rc="$vmm_rc"
    ((rc == 0)) && rc=1
    fail "$rc" "$why"
fi
report_args=(report "${logs[@]}" --out "$stage")
[[ -f "$stage/host.json" ]] && report_args+=(--host "$stage/host.json")
((quick)) && report_args+=(--strict --check)
set +e
"$hbreport" "${report_args[@]}" >/dev/null
report_rc=$?
set -e
if ((report_rc != 0)) && [[ ! -f "$stage/report.md" ]]; then
    rc="$vmm_rc"
    ((rc == 0)) && rc=1
    fail "$rc" "the report could not be made (hbreport's message is above)"
fi

# With saved logs, the guests' own verdicts decide: a log whose guest failed
# or never finished is not a successful run, even though it has a report.
if ((${#logs_in[@]})); then
    for l in "${logs[@]}"; do
        st="$(hb_exit_status "$l")"
        if [[ -z "$st" ]]; then
            fail 125 "$(basename "$l") has no HB exit record: that guest did not finish (the report is in the directory)"
        elif ((st != 0)); then
            rc="$st"
            ((rc > 0 && rc < 124)) || rc=1
            fail "$rc" "$(basename "$l"): the guest exited with status $st (the report is in the directory)"
        fi
    done
fi
if ((vmm_rc != 0)); then
    fail "$vmm_rc" "boot ${#logs[@]} failed with status $vmm_rc (the report covers the boots that ran)"
fi
if ((report_rc != 0)); then
    fail 1 "a check failed (hbreport's messages are above; the report is in the directory)"
fi
publish "$out"
stage=""
if ((${#logs_in[@]})); then
    hb_say "done: a report on ${#logs[@]} saved log(s)"
else
    extra_note=""
    [[ -n "$extra_suites" ]] && extra_note=", and as many at $extra_smp vCPUs (suite=$extra_suites)"
    hb_say "done in $((($(hb_now_us) - started_us) / 1000000)) s of wall-clock time: $counting counting and $timed timed boot(s) at $smp vCPUs$extra_note"
fi
echo "$out/report.md"

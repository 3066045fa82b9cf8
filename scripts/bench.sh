#!/usr/bin/env bash
# Runs hyperbatch's benchmarks (run=bench) in one boot and turns the serial
# log into a results directory: serial.log, results.json, report.md and SVG
# plots (tools/hbreport).
#
#   scripts/bench.sh [options] [-- EXTRA CMDLINE...]
#
#   --quick            the guest's quick mode (fewer pages and repetitions);
#                      also makes hbreport strict and checks that every suite
#                      reported and the workload checksums match (what CI runs)
#   --ch [PATH]        boot under cloud-hypervisor (scripts/run-ch.sh) instead
#                      of QEMU; PATH is its binary (default: $CLOUD_HYPERVISOR,
#                      else cloud-hypervisor on PATH)
#   --smp N            vCPUs (default 4: the smp suite goes up to all of them)
#   --machine M        QEMU machine: microvm, pc or q35 (default microvm)
#   --accel A          QEMU accelerator: auto, tcg or kvm (default auto, which
#                      picks TCG on hosts whose KVM interprets ring 0)
#   --mem SIZE         guest RAM (default 512M)
#   --timeout SECONDS  stop the guest after this long (default 1800; 600 with
#                      --quick)
#   --kernel PATH      boot this ELF instead of building one
#   --out DIR          the results directory (default
#                      results/<UTC date>-<machine>-smp<N>[-quick])
#   --from-log FILE    do not boot: make the report from a serial log saved
#                      earlier (FILE is copied into the results directory)
#   --verbose          also stream the guest's serial console (its readable
#                      tables) to stderr
#   -- EXTRA...        more kernel command line, e.g. -- suite=mm
#
# While the guest runs, its `HB progress` records drive a progress line on
# stderr, so a run of minutes is never silent. At the end the paths of the
# report, results.json and plots are printed on stdout.
#
# Exit status: 0 the guest succeeded and the report was made; 1 the report
# could not be made (or, with --quick, a check failed); 2 bad usage; else
# the VMM script's status (the guest's failure status, 124 timeout, 125 no
# exit record, 126 the VMM failed). A failed guest still gets a report when
# its log holds any figures, to show how far it got.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HB_TOOL=bench
# shellcheck source=scripts/lib.sh
source "$root/scripts/lib.sh"

quick=0
vmm=qemu
ch_path=""
smp=4
machine=microvm
accel=auto
mem=512M
timeout=""
kernel=""
out=""
from_log=""
verbose=0
extra=()

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
need() { [[ $# -ge 2 && -n "$2" ]] || {
    hb_say "$1 needs a value (see --help)"
    exit 2
}; }
while (($#)); do
    case "$1" in
    --smp | --machine | --accel | --mem | --timeout | --kernel | --out | --from-log)
        need "$@"
        case "$1" in
        --smp) smp="$2" ;;
        --machine) machine="$2" ;;
        --accel) accel="$2" ;;
        --mem) mem="$2" ;;
        --timeout) timeout="$2" ;;
        --kernel) kernel="$2" ;;
        --out) out="$2" ;;
        --from-log) from_log="$2" ;;
        esac
        shift 2
        ;;
    --ch)
        vmm=ch
        # The path is optional: take the next word unless it is an option.
        if [[ $# -ge 2 && -n "$2" && "$2" != -* ]]; then
            ch_path="$2"
            shift
        fi
        shift
        ;;
    --quick) quick=1 && shift ;;
    --verbose) verbose=1 && shift ;;
    -h | --help) usage && exit 0 ;;
    --)
        shift
        extra=("$@")
        break
        ;;
    *)
        hb_say "unknown option '$1' (the kernel command line goes after --; see --help)"
        exit 2
        ;;
    esac
done

[[ "$smp" =~ ^[1-9][0-9]*$ ]] || {
    hb_say "--smp must be a positive number, not '$smp'"
    exit 2
}
if [[ -z "$timeout" ]]; then
    timeout=1800
    ((quick)) && timeout=600
fi
[[ "$timeout" =~ ^[0-9]+$ ]] || {
    hb_say "--timeout must be whole seconds, not '$timeout'"
    exit 2
}
if [[ -n "$from_log" && ! -r "$from_log" ]]; then
    hb_say "--from-log: cannot read '$from_log'"
    exit 2
fi
label="$machine"
[[ "$vmm" == ch ]] && label=ch
[[ -n "$from_log" ]] && label="${label}-fromlog"

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
if [[ -z "$out" ]]; then
    suffix=""
    ((quick)) && suffix="-quick"
    out="$root/results/$(date -u +%Y%m%d-%H%M%S)-${label}-smp${smp}${suffix}"
fi
mkdir -p "$out"
serial="$out/serial.log"

# Reads the guest's serial stream on stdin and shows the HB progress
# records as a progress line on stderr (rewritten in place on a terminal,
# one line per event otherwise, e.g. in CI logs).
show_progress() {
    local line suite state secs figures=0 current="booting" start=$SECONDS tty=0 re_p re_s
    [[ -t 2 ]] && tty=1
    re_p='"event" *: *"progress"'
    re_s='"suite" *: *"([^"]*)".*"state" *: *"([^"]*)"'
    say_progress() {
        local msg
        msg="$(printf 'bench: [%4d s] %-32s %4d figures' $((SECONDS - start)) "$1" "$figures")"
        if ((tty)); then
            printf '\r\033[K%s' "$msg" >&2
        else
            echo "$msg" >&2
        fi
    }
    say_progress "$current"
    while IFS= read -r line; do
        line="${line%$'\r'}"
        if [[ "$line" == "HB "* ]]; then
            if [[ "$line" =~ $re_p ]] && [[ "$line" =~ $re_s ]]; then
                suite="${BASH_REMATCH[1]}"
                state="${BASH_REMATCH[2]}"
                secs="$(sed -nE 's/.*"seconds" *: *([0-9.]+).*/\1/p' <<<"$line")"
                if [[ "$state" == start ]]; then
                    current="suite $suite running"
                else
                    [[ -n "$secs" ]] && secs="$(printf '%.1f' "$secs")"
                    current="suite $suite done${secs:+ in $secs s}"
                fi
                say_progress "$current"
            elif [[ "$line" == *'"event":"result"'* || "$line" =~ \"event\"\ *:\ *\"result\" ]]; then
                figures=$((figures + 1))
                ((tty)) && say_progress "$current"
            elif [[ "$line" =~ \"event\"\ *:\ *\"exit\" ]]; then
                current="guest finished"
                say_progress "$current"
            fi
        elif ((verbose)); then
            ((tty)) && printf '\r\033[K' >&2
            echo "$line" >&2
        fi
    done
    ((tty)) && echo >&2
    return 0
}

# ---- the boot ----
vmm_rc=0
if [[ -n "$from_log" ]]; then
    hb_say "no boot: reporting on $from_log"
    if [[ "$(realpath "$from_log")" != "$(realpath -m "$serial")" ]]; then
        cp "$from_log" "$serial"
    fi
else
    if [[ -z "$kernel" ]]; then
        kernel="$(scripts/build.sh)"
    fi
    cmdline=(run=bench)
    ((quick)) && cmdline+=(quick)
    cmdline+=("${extra[@]}")
    if [[ "$vmm" == ch ]]; then
        run=(scripts/run-ch.sh)
        [[ -n "$ch_path" ]] && run+=(--ch "$ch_path")
        run+=(--smp "$smp" --mem "$mem")
        accel=kvm
    else
        run=(scripts/run-qemu.sh --machine "$machine" --accel "$accel" --smp "$smp" --mem "$mem")
    fi
    run+=(--kernel "$kernel" --timeout "$timeout" --log "$serial" -- "${cmdline[@]}")
    hb_say "$(hb_show "${run[@]}")"
    # The VMM script's own messages go to stderr and into run.log; its
    # stdout is the serial stream, which feeds the progress line.
    set +e
    "${run[@]}" 2> >(tee "$out/run.log" >&2) | show_progress
    vmm_rc=${PIPESTATUS[0]}
    set -e
    # run-qemu.sh names the accelerator it chose in its closing line:
    # "guest exit status 0 (isa-debug-exit, tcg, 12.34 s)".
    if [[ "$accel" == auto ]]; then
        sleep 0.2 # let tee finish writing run.log
        chosen="$(sed -nE 's/.*guest exit status .*\([^,]*, (tcg|kvm), .*/\1/p' "$out/run.log" | tail -n 1)"
        accel="${chosen:-auto}"
    fi
    if ((vmm_rc != 0)); then
        hb_say "the guest run failed (status $vmm_rc); its serial log is $serial"
    fi
fi

# ---- the report ----
if [[ ! -s "$serial" ]]; then
    hb_say "FAILED: the guest printed nothing, so there is no report to make"
    ((vmm_rc != 0)) && exit "$vmm_rc"
    exit 1
fi
report_args=("$serial" --out "$out" --accel "$accel" --machine "$label")
((quick)) && report_args+=(--strict --check)
hb_say "$(hb_show "$hbreport" "${report_args[@]}")"
set +e
"$hbreport" "${report_args[@]}"
report_rc=$?
set -e

if ((vmm_rc != 0)); then
    exit "$vmm_rc"
fi
if ((report_rc != 0)); then
    hb_say "FAILED: the report could not be made, or a check failed (hbreport's message is above)"
    exit 1
fi
hb_say "results in $out"

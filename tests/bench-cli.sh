#!/usr/bin/env bash
# Tests of scripts/bench.sh as a user meets it, run by scripts/test.sh after
# the kernel is built:
#   - every bad option is refused with its own message and exit 2, before
#     anything is built;
#   - --from-log and --out with paths relative to the caller's directory;
#   - --from-log exits with the guest's failure status for a log whose guest
#     failed, and 125 for a log without an exit record, and still leaves the
#     report, marked FAILED;
#   - --from-log takes the log's accelerator, machine and date from the run's
#     host.json, and says "not recorded" for a bare log;
#   - --from-log brings each boot's run log, from which the report reads
#     how QEMU ran it;
#   - a full run boots the --extra-smp machine for the smp suite and reports
#     its figures apart, and boots none for suites it does not cover;
#   - a boot the guest refuses (`-- suite=nosuch`) surfaces the guest's own
#     message and leaves no report, only the logs and FAILED.
# Nothing here asserts a time.
#
#   tests/bench-cli.sh --kernel PATH
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
kernel=""
while (($#)); do
    case "$1" in
    --kernel)
        kernel="$2"
        shift 2
        ;;
    *)
        echo "bench-cli: unknown option '$1'" >&2
        exit 2
        ;;
    esac
done
[[ -f "$kernel" ]] || {
    echo "bench-cli: --kernel PATH is required (scripts/build.sh prints it)" >&2
    exit 2
}
[[ "$kernel" == /* ]] || kernel="$PWD/$kernel"
bench="$root/scripts/bench.sh"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failures=0
passed=0

ok() {
    passed=$((passed + 1))
    echo "ok   $1"
}
bad() {
    failures=$((failures + 1))
    echo "FAIL $1" >&2
    [[ -n "${2:-}" ]] && sed 's/^/     | /' "$2" | head -n 12 >&2
    return 0
}

# expect NAME STATUS PATTERN -- ARGS...: runs bench.sh ARGS in $work, expects
# the exit status and stderr matching PATTERN (grep -E).
expect() {
    local name="$1" want="$2" pattern="$3"
    shift 4
    local rc=0
    (cd "$work" && "$bench" "$@") >"$work/out.txt" 2>"$work/err.txt" || rc=$?
    if ((rc != want)); then
        bad "$name: exit $rc, expected $want" "$work/err.txt"
    elif ! grep -qE -- "$pattern" "$work/err.txt"; then
        bad "$name: stderr lacks /$pattern/" "$work/err.txt"
    else
        ok "$name"
    fi
}

# ---- bad options: their own message, exit 2, nothing built ----
for case in \
    "--accel kvmm|--accel must be auto, tcg or kvm, not 'kvmm'" \
    "--ch /nonexistent|--ch: '/nonexistent' is not an executable file" \
    "--machine foo|--machine must be microvm, pc or q35, not 'foo'" \
    "--mem 12X|--mem must look like 512M or 1G, not '12X'" \
    "--smp 0|--smp must be a number from 1 to 9999, not '0'" \
    "--extra-smp x|--extra-smp must be a number from 0 to 9999, not 'x'" \
    "--runs 0|--runs must be a number from 1 to 99, not '0'" \
    "--timeout 9999999999999|--timeout must be whole seconds from 1 to 604800" \
    "--icount --timed|--icount and --timed exclude each other" \
    "--icount --accel kvm|--icount needs QEMU TCG" \
    "--kernel /nonexistent|--kernel: no file '/nonexistent'" \
    "--from-log /nonexistent|--from-log: cannot read '/nonexistent'" \
    "--frob|unknown option '--frob'" \
    "--smp|--smp needs a value"; do
    args="${case%%|*}"
    msg="${case#*|}"
    # shellcheck disable=SC2086 # the options are meant to split
    expect "bad option: $args" 2 "$msg" -- $args
    if grep -q "building" "$work/err.txt"; then
        bad "bad option: $args: something was built before the option was refused" "$work/err.txt"
    fi
done

rc=0
(cd "$work" && HB_TCG_THREAD=many "$bench") >/dev/null 2>"$work/err.txt" || rc=$?
if ((rc == 2)) && grep -q "HB_TCG_THREAD must be single or multi, not 'many'" "$work/err.txt"; then
    ok "bad HB_TCG_THREAD"
else
    bad "bad HB_TCG_THREAD: exit $rc" "$work/err.txt"
fi

# --out on a directory that is not a results directory: refused, untouched.
mkdir -p "$work/mine"
echo "keep me" >"$work/mine/picture.svg"
expect "--out on someone else's directory" 2 "is neither empty nor a results directory" -- --out mine
if [[ "$(cat "$work/mine/picture.svg")" == "keep me" ]]; then
    ok "--out left the other directory's files alone"
else
    bad "--out touched another directory's files"
fi

# ---- every --help example is a command that parses ----
help="$("$bench" --help)"
grep -q "scripts/bench.sh --quick -- suite=mm" <<<"$help" && ok "--help shows its examples" ||
    bad "--help lost its examples"

# ---- a results directory to report on again ----
# One counting boot of the quick benchmarks of one suite: a real log, fast.
src="$work/src"
(cd "$work" && "$bench" --icount --quick --smp 1 --kernel "$kernel" --out src -- suite=cpu) \
    >"$work/out.txt" 2>"$work/err.txt" || bad "the counting boot for the --from-log tests failed" "$work/err.txt"
if [[ -f "$src/report.md" && -f "$src/host.json" && -f "$src/serial-count-1.log" ]]; then
    ok "bench.sh --icount --quick -- suite=cpu writes a results directory"
else
    bad "no results directory from the counting boot" "$work/err.txt"
    echo "bench-cli: $passed passed, $failures failed (the rest needs that directory)"
    exit 1
fi

# --from-log and --out relative to the caller's directory, with a file of
# the same name in the repository root that must not be picked up instead.
mkdir -p "$work/here"
cp "$src/serial-count-1.log" "$work/here/serial-count-1.log"
expect "--from-log and --out relative to the caller" 0 "done: a report on 1 saved log" \
    -- --from-log here/serial-count-1.log --out here/report
[[ -f "$work/here/report/report.md" && ! -e "$root/here" ]] &&
    ok "--out landed in the caller's directory" ||
    bad "--out did not land in the caller's directory"

# --from-log on a results directory: the run's own accelerator, machine and
# date, from its host.json and env records.
expect "--from-log DIR" 0 "done" -- --from-log src --out again
date="$(sed -nE 's/.*"date": "([^"]+)".*/\1/p' "$src/host.json")"
md="$work/again/report.md"
if grep -q "counting: TCG, single-threaded, icount" "$md" && grep -q "· microvm ·" "$md" &&
    grep -q "Run started $date" "$md"; then
    ok "--from-log reports the log's accelerator, machine and date"
else
    bad "--from-log lost the run's accelerator, machine or date" "$md"
fi
# Its run log came along, and the TCG threading is read from it.
if [[ -f "$work/again/run-count-1.log" ]] &&
    grep -q '"tcg_thread_from": "the QEMU command line"' "$work/again/results.json"; then
    ok "--from-log DIR brings each boot's run log, and the report reads how QEMU ran"
else
    bad "--from-log DIR lost the run logs or their TCG threading" "$work/again/results.json"
fi
# A bare log: what the log says, and "not recorded" for the rest.
cp "$src/serial-count-1.log" "$work/bare.log"
expect "--from-log of a bare log" 0 "done" -- --from-log bare.log --out bare
if grep -q "machine not recorded" "$work/bare/report.md" && grep -q "counting: TCG" "$work/bare/report.md"; then
    ok "a bare log's report says what it does not know"
else
    bad "a bare log's report invents what it does not know" "$work/bare/report.md"
fi

# ---- --from-log: the guest's verdict decides the exit status ----
sed 's/"event":"exit","status":0/"event":"exit","status":3/' "$src/serial-count-1.log" >"$work/failed.log"
expect "--from-log of a failed guest exits with its status" 3 "the guest exited with status 3" \
    -- --from-log failed.log --out failed
[[ -f "$work/failed/FAILED" && -f "$work/failed/report.md" ]] &&
    ok "a failed guest's report is kept and marked FAILED" ||
    bad "a failed guest's directory lacks report.md or FAILED"
grep -v '"event":"exit"' "$src/serial-count-1.log" >"$work/noexit.log"
expect "--from-log of a log without an exit record exits 125" 125 "has no HB exit record" \
    -- --from-log noexit.log --out noexit

# ---- a full run's extra boots: the smp suite again on a wider machine ----
# Small on purpose: the smp suite alone, 1 vCPU, extra boots at 2.
expect "a full run boots the extra machine for the smp suite" 0 "the extra boots: suite=smp at 2 vCPUs" \
    -- --icount --smp 1 --extra-smp 2 --kernel "$kernel" --out wide -- suite=smp
if [[ -f "$work/wide/serial-count-smp2-1.log" && -f "$work/wide/run-count-smp2-1.log" ]] &&
    grep -q "### smp at up to 2 vCPUs" "$work/wide/report.md" &&
    grep -q '"id": "smp/unmap_shootdown/batched/batch=256/vcpus=2/smp=2"' "$work/wide/results.json"; then
    ok "the extra boot's figures are reported apart, under ids ending in /smp=2"
else
    bad "the extra boot's logs or figures are missing" "$work/err.txt"
fi
# With a suite= list that names neither smp nor scale, no extra boot.
expect "no extra boot for suites it does not cover" 0 "done" \
    -- --icount --smp 1 --extra-smp 2 --kernel "$kernel" --out narrow -- suite=cpu
if grep -q "the extra boots" "$work/err.txt" || [[ -e "$work/narrow/serial-count-smp2-1.log" ]]; then
    bad "suite=cpu booted the extra machine" "$work/err.txt"
else
    ok "suite=cpu boots no extra machine"
fi

# ---- a boot the guest refuses: its own message, no report ----
expect "-- suite=nosuch surfaces the guest's message" 1 \
    'the guest said: \[cpu0\] ERROR no benchmark suite is named "nosuch"' \
    -- --icount --quick --smp 1 --kernel "$kernel" --out nosuch -- suite=nosuch
if [[ -f "$work/nosuch/FAILED" && ! -e "$work/nosuch/report.md" ]]; then
    ok "a refused boot leaves its logs and FAILED, and no report"
else
    bad "a refused boot left a report, or no FAILED"
fi

echo "bench-cli: $passed passed, $failures failed"
((failures == 0))

#!/usr/bin/env bash
# Runs the fuzz targets of the kernel library (fuzz/fuzz_targets/) with
# cargo-fuzz (libFuzzer, nightly), one after the other.
#
#   fuzz/run.sh [--seconds N | --runs N] [--sanitizer address|none] [TARGET...]
#
#   --seconds N   stop each target after N seconds (default 20: the bounded
#                 run scripts/test.sh does)
#   --runs N      stop each target after N executions instead (a campaign:
#                 --runs 10000000); prints each target's figures
#   --sanitizer S address (default) or none: none runs about 8x faster (no
#                 ASan allocator), for campaigns; it still catches every
#                 panic, but not a memory error in unsafe code
#   TARGET...     start_info, acpi, cmdline (default: all three)
#
# Each target first replays fuzz/regressions/TARGET/ (inputs that once
# crashed, kept so they stay fixed), then fuzzes from its corpus in
# target/fuzz-corpus/TARGET (kept between runs, not in git). A crash stops
# the run: libFuzzer prints the input's path under fuzz/artifacts/, and
# the exit status is non-zero; so does an input that runs over 10 s (a
# hang). Installs cargo-fuzz when it is missing.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds=20
runs=""
sanitizer=address
targets=()
while (($#)); do
    case "$1" in
    --seconds | --runs)
        [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]{0,9}$ ]] || {
            echo "fuzz/run.sh: $1 needs a positive whole number (see --help)" >&2
            exit 2
        }
        if [[ "$1" == --seconds ]]; then seconds="$2"; else runs="$2"; fi
        shift 2
        ;;
    --sanitizer)
        [[ $# -ge 2 && ("$2" == address || "$2" == none) ]] || {
            echo "fuzz/run.sh: --sanitizer must be address or none" >&2
            exit 2
        }
        sanitizer="$2"
        shift 2
        ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    start_info | acpi | cmdline)
        targets+=("$1")
        shift
        ;;
    *)
        echo "fuzz/run.sh: unknown option or target '$1' (see --help)" >&2
        exit 2
        ;;
    esac
done
((${#targets[@]})) || targets=(start_info acpi cmdline)

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: installing cargo-fuzz (cargo install cargo-fuzz --locked)" >&2
    cargo +nightly install cargo-fuzz --locked
fi

cd "$root/fuzz"
cargo +nightly fuzz build -s "$sanitizer" >&2 || {
    echo "fuzz/run.sh: the fuzz targets did not build (errors above)" >&2
    exit 1
}
for t in "${targets[@]}"; do
    corpus="$root/target/fuzz-corpus/$t"
    mkdir -p "$corpus" "regressions/$t"
    if [[ -n "$(ls -A "regressions/$t")" ]]; then
        echo "fuzz/run.sh: $t: replaying fuzz/regressions/$t" >&2
        cargo +nightly fuzz run -s "$sanitizer" "$t" "regressions/$t" -- -runs=0 2>&1 |
            tail -n 3 >&2
    fi
    limit=(-max_total_time="$seconds")
    log="$root/target/fuzz-$t-bounded.log"
    if [[ -n "$runs" ]]; then
        limit=(-runs="$runs")
        log="$root/target/fuzz-$t-campaign.log"
    fi
    if [[ -n "$runs" ]]; then what="$runs executions"; else what="$seconds s"; fi
    echo "fuzz/run.sh: $t: $what" >&2
    start=$SECONDS
    # -timeout: an input that runs over 10 s is a hang, reported as a crash.
    cargo +nightly fuzz run -s "$sanitizer" "$t" "$corpus" -- "${limit[@]}" -dict="dicts/$t.dict" \
        -timeout=10 -print_final_stats=1 2>"$log" || {
        tail -n 40 "$log" >&2
        echo "fuzz/run.sh: $t FAILED after $((SECONDS - start)) s (log: ${log#"$root"/})" >&2
        exit 1
    }
    execs="$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+)/\1/p' "$log")"
    cov="$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$log" | tail -n 1)"
    echo "fuzz: $t ($sanitizer): ${execs:-?} executions in $((SECONDS - start)) s, $cov, no crash"
done

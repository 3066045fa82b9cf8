#!/usr/bin/env bash
# Runs every check hyperbatch has, in order, and stops at the first failure:
#
#   1. scripts/setup.sh      installs what is missing (rust-src, clippy and
#                            rustfmt through rustup; QEMU through apt-get as root)
#   2. cargo fmt --check
#   3. clippy -D warnings    on the host library and its tests, then on the
#                            kernel binary for target.json
#   4. cargo test            the library's unit tests, on the host
#   4b. fuzz/run.sh          the library's parsers of untrusted input (start_info
#                            and the memory map, ACPI tables, the command line)
#                            under libFuzzer, 10 s per target (installs
#                            cargo-fuzz when missing)
#   5. tools/hbreport        the benchmark report tool: fmt, clippy, its tests
#                            on a recorded log
#   6. cargo fuzz            hbreport's log reader, report and plots under
#                            libFuzzer for 15 s (installs cargo-fuzz if missing)
#   7. scripts/build.sh      the kernel ELF
#   8. scripts/bench.sh      a quick benchmark run (run=bench quick, 2 vCPUs,
#                            one counting and two timed boots): every suite
#                            must print parseable results, the workload
#                            checksums must match across backends, the
#                            report and plots must be written, and
#                            results.json must match its documented schema
#   9. determinism           two counting runs (QEMU icount) must print
#                            identical result records, and hbreport compare
#                            must report no change
#  10. tests/bench-cli.sh    bench.sh's options, --from-log and failures, as a
#                            user meets them
#  11. tests/guest.py        the kernel booted under QEMU (TCG) in a matrix of
#                            machines and CPU counts, plus KVM rows where
#                            /dev/kvm opens (tests/test_guest.py first checks
#                            the matrix's verdicts on made-up logs)
#
#   scripts/test.sh [--quick]     --quick: only the guest rows marked quick
#
# CI runs this through .ci/run. Its last line is guest.py's `N passed, N failed`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

guest_args=()
while (($#)); do
    case "$1" in
    --quick) guest_args+=(--quick) ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "test.sh: unknown option '$1' (see --help)" >&2
        exit 2
        ;;
    esac
    shift
done

started=$SECONDS
step_name=""
step() {
    step_name="$1"
    echo
    echo "==> $step_name ($((SECONDS - started)) s so far)"
}
on_exit() {
    local rc=$?
    if ((rc != 0)) && [[ -n "$step_name" ]]; then
        echo >&2
        echo "test.sh: FAILED at step '$step_name' (exit $rc) after $((SECONDS - started)) s" >&2
    fi
}
trap on_exit EXIT

step "setup: toolchain and QEMU"
scripts/setup.sh --for test

step "format: cargo +nightly fmt --check"
if ! cargo +nightly fmt --check; then
    echo "test.sh: formatting differs (above); run: cargo +nightly fmt" >&2
    exit 1
fi

step "lint: clippy on the host library and its tests"
cargo +nightly clippy --lib --tests -- -D warnings

step "lint: clippy on the kernel (target.json)"
scripts/build.sh --clippy --no-setup

step "unit tests: cargo +nightly test (host)"
cargo +nightly test

step "fuzz: fmt and a bounded run of fuzz/ (cargo-fuzz, 10 s per target)"
if ! cargo +nightly fmt --manifest-path fuzz/Cargo.toml --check; then
    echo "test.sh: fuzz/ formatting differs (above); run: cargo +nightly fmt --manifest-path fuzz/Cargo.toml" >&2
    exit 1
fi
fuzz/run.sh --seconds 10

step "report tool: fmt, clippy and tests of tools/hbreport"
if ! cargo +nightly fmt -p hbreport --check; then
    echo "test.sh: tools/hbreport formatting differs (above); run: cargo +nightly fmt -p hbreport" >&2
    exit 1
fi
# The fuzz crate is a workspace of its own, which the line above misses.
if ! (cd tools/hbreport/fuzz && cargo +nightly fmt --check); then
    echo "test.sh: tools/hbreport/fuzz formatting differs (above); run it in tools/hbreport/fuzz: cargo +nightly fmt" >&2
    exit 1
fi
cargo +nightly clippy -p hbreport --all-targets -- -D warnings
cargo +nightly test -p hbreport

step "fuzz: hbreport's log reader, report and plots (cargo-fuzz, 15 s)"
# A bounded run of the libFuzzer target; the long campaign and its figures
# are in README.md. Without a sanitizer (-s none): hbreport is safe Rust, the
# target looks for panics, hangs and broken invariants, which need none, and
# AddressSanitizer made it about 6 times slower (89 against 508 runs/s on
# the same inputs here).
if ! command -v cargo-fuzz >/dev/null 2>&1 && [[ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo-fuzz" ]]; then
    echo "test.sh: installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    cargo install cargo-fuzz --locked
fi
fuzz_log="target/fuzz-report.log"
mkdir -p target tools/hbreport/fuzz/corpus/report
fuzz_rc=0
(
    cd tools/hbreport
    cargo +nightly fuzz run -s none report fuzz/corpus/report fuzz/seeds testdata -- \
        -max_len=4096 -timeout=20 -max_total_time=15 -print_final_stats=1
) >"$fuzz_log" 2>&1 || fuzz_rc=$?
grep -aE '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|==[0-9]+==|SUMMARY|thread .* panicked|Test unit written)' \
    "$fuzz_log" || true
if ((fuzz_rc != 0)); then
    tail -n 30 "$fuzz_log" >&2
    echo "test.sh: the fuzz target failed (exit $fuzz_rc; the crashing input is named above; whole log $fuzz_log)" >&2
    exit 1
fi

step "build: the kernel"
kernel="$(scripts/build.sh --no-setup)"

step "bench: scripts/bench.sh --quick (report, plots, results.json)"
# One counting boot and two timed boots, so that the figures are grouped
# across boots as in a full run. --quick makes hbreport strict and checks
# every suite and the workload checksums; what is left to check here is
# that the files are there and results.json matches its documented schema.
bench_out="target/bench-quick"
scripts/bench.sh --quick --accel tcg --smp 2 --runs 2 --kernel "$kernel" --out "$bench_out" >/dev/null
for f in report.md results.json results.csv benchmark.json host.json serial-count-1.log serial-timed-1.log \
    serial-timed-2.log mm_map_unmap.svg speedup.svg privileged.svg smp_shootdown.svg workloads.svg; do
    if [[ ! -s "$bench_out/$f" ]]; then
        echo "test.sh: bench.sh wrote no $bench_out/$f" >&2
        exit 1
    fi
done
hbreport="${CARGO_TARGET_DIR:-target}/debug/hbreport"
"$hbreport" validate "$bench_out"
echo "bench: report.md, results.json (valid), results.csv and $(ls "$bench_out"/*.svg | wc -l) plots in $bench_out"

step "determinism: two counting runs print identical figures, and compare says so"
# The counting mode's promise: the same build prints the same instruction
# counts in every boot. This fails if anything nondeterministic creeps into
# the guest (a timing-dependent path, an uninitialised read, a race).
count_a="target/bench-icount-a"
count_b="target/bench-icount-b"
for d in "$count_a" "$count_b"; do
    scripts/bench.sh --icount --quick --smp 2 --kernel "$kernel" --out "$d" >/dev/null
done
records() { tr -d '\r' <"$1/serial-count-1.log" | grep -aE '^HB \{.*"event" *: *"result"'; }
if ! diff <(records "$count_a") <(records "$count_b") >/dev/null; then
    echo "test.sh: two counting boots of the same kernel printed different result records:" >&2
    diff <(records "$count_a") <(records "$count_b") | head -n 10 >&2
    exit 1
fi
if ! compare_out="$("$hbreport" compare "$count_a" "$count_b")"; then
    echo "$compare_out" >&2
    echo "test.sh: hbreport compare of two identical counting runs did not exit 0" >&2
    exit 1
fi
if ! grep -q "No change: every figure is the same." <<<"$compare_out"; then
    echo "$compare_out" | tail -n 5 >&2
    echo "test.sh: hbreport compare of two identical counting runs found a change" >&2
    exit 1
fi
echo "determinism: $(records "$count_a" | wc -l) result records identical in two boots; compare: no change"

step "bench.sh as a user meets it: tests/bench-cli.sh"
# Bad options refused before any build, relative paths, --from-log's exit
# status and metadata, a refused boot's own message.
tests/bench-cli.sh --kernel "$kernel"

step "guest tests: tests/test_guest.py (the matrix's verdicts), then tests/guest.py"
python3 tests/test_guest.py
# guest.py's closing `N passed, N failed` line is the last thing printed.
trap - EXIT
if ! python3 tests/guest.py --kernel "$kernel" "${guest_args[@]}"; then
    exit 1
fi

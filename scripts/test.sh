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
#                            under libFuzzer, 20 s per target (installs
#                            cargo-fuzz when missing)
#   5. tools/hbreport        the benchmark report tool: fmt, clippy, its tests
#                            on a recorded log
#   6. scripts/build.sh      the kernel ELF
#   7. scripts/bench.sh      a quick benchmark boot (run=bench quick, 2 vCPUs):
#                            every suite must print parseable results, the
#                            workload checksums must match across backends,
#                            and the report and plots must be written
#   8. tests/guest.py        the kernel booted under QEMU (TCG) in a matrix of
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

step "fuzz: fmt and a bounded run of fuzz/ (cargo-fuzz, 20 s per target)"
if ! cargo +nightly fmt --manifest-path fuzz/Cargo.toml --check; then
    echo "test.sh: fuzz/ formatting differs (above); run: cargo +nightly fmt --manifest-path fuzz/Cargo.toml" >&2
    exit 1
fi
fuzz/run.sh --seconds 20

step "report tool: fmt, clippy and tests of tools/hbreport"
if ! cargo +nightly fmt -p hbreport --check; then
    echo "test.sh: tools/hbreport formatting differs (above); run: cargo +nightly fmt -p hbreport" >&2
    exit 1
fi
cargo +nightly clippy -p hbreport --all-targets -- -D warnings
cargo +nightly test -p hbreport

step "build: the kernel"
kernel="$(scripts/build.sh --no-setup)"

step "bench: scripts/bench.sh --quick (report and plots)"
# --quick makes hbreport strict and checks every suite and the workload
# checksums; what is left to check here is that the files are there.
bench_out="target/bench-quick"
rm -rf "$bench_out"
scripts/bench.sh --quick --accel tcg --smp 2 --kernel "$kernel" --out "$bench_out" >/dev/null
for f in report.md results.json serial.log mm_map_unmap.svg smp_shootdown.svg workloads.svg; do
    if [[ ! -s "$bench_out/$f" ]]; then
        echo "test.sh: bench.sh wrote no $bench_out/$f" >&2
        exit 1
    fi
done
svgs=("$bench_out"/*.svg)
for f in "${svgs[@]}"; do
    if [[ "$(head -c 4 "$f")" != "<svg" ]]; then
        echo "test.sh: $f is not an SVG document" >&2
        exit 1
    fi
done
echo "bench: report.md, results.json and ${#svgs[@]} plots in $bench_out"

step "guest tests: tests/test_guest.py (the matrix's verdicts), then tests/guest.py"
python3 tests/test_guest.py
# guest.py's closing `N passed, N failed` line is the last thing printed.
trap - EXIT
if ! python3 tests/guest.py --kernel "$kernel" "${guest_args[@]}"; then
    exit 1
fi

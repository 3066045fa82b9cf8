#!/usr/bin/env bash
# Checks, and where it can installs, what hyperbatch needs on this machine.
#
#   scripts/setup.sh [--for build|qemu|test] [--check]
#
#   --for build   nightly cargo with rust-src (build-std rebuilds `core` from it)
#   --for qemu    qemu-system-x86_64, QEMU 7.2 or newer (to boot a built kernel)
#   --for test    both, plus clippy, rustfmt and python3 >= 3.11 (the default)
#   --check       install nothing: report what is missing and how to get it
#
# What it installs when something is missing (set HB_NO_INSTALL=1 for --check):
#   - rust-src, clippy, rustfmt: `rustup component add ... --toolchain nightly`
#   - QEMU: `apt-get update` then `apt-get install qemu-system-x86 seabios`,
#     only when running as root; otherwise it prints the command and fails.
# Exit status: 0 when everything needed is present afterwards, 1 otherwise.
set -euo pipefail

purpose="test"
install=1
[[ "${HB_NO_INSTALL:-0}" == 1 ]] && install=0

while (($#)); do
    case "$1" in
    --for)
        purpose="${2:?--for needs build, qemu or test}"
        shift 2
        ;;
    --for=*)
        purpose="${1#--for=}"
        shift
        ;;
    --check)
        install=0
        shift
        ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "setup.sh: unknown option '$1' (see --help)" >&2
        exit 2
        ;;
    esac
done
case "$purpose" in
build | qemu | test) ;;
*)
    echo "setup.sh: --for must be build, qemu or test, not '$purpose'" >&2
    exit 2
    ;;
esac

missing=0
say() { echo "setup: $*" >&2; }
fail() {
    say "MISSING: $1"
    say "  fix: $2"
    missing=1
}

# --- Rust: nightly, because build-std and JSON target specs are unstable. ---
if [[ "$purpose" == qemu ]]; then
    : # a built kernel boots without Rust
elif ! command -v rustup >/dev/null 2>&1 || ! command -v cargo >/dev/null 2>&1; then
    fail "rustup/cargo are not on PATH" \
        "install rustup (https://rustup.rs), then: rustup toolchain install nightly --profile minimal -c rust-src,clippy,rustfmt"
elif ! cargo +nightly --version >/dev/null 2>&1; then
    cmd="rustup toolchain install nightly --profile minimal -c rust-src,clippy,rustfmt"
    if ((install)); then
        say "installing the nightly toolchain: $cmd"
        # RUSTUP_AUTO_INSTALL=0 in some environments only stops implicit
        # installs; an explicit `toolchain install` still runs.
        $cmd >&2 || fail "the nightly toolchain (install failed)" "$cmd"
    else
        fail "the nightly toolchain" "$cmd"
    fi
fi

components=(rust-src)
[[ "$purpose" == test ]] && components+=(clippy rustfmt)
if [[ "$purpose" != qemu ]] && cargo +nightly --version >/dev/null 2>&1; then
    installed="$(rustup component list --toolchain nightly --installed 2>/dev/null || true)"
    for c in "${components[@]}"; do
        # Installed components are listed as `rust-src` or `clippy-x86_64-unknown-linux-gnu`.
        if ! grep -Eq "^${c}(-[a-z0-9_]+-[a-z0-9_]+-[a-z0-9_]+(-[a-z0-9_]+)?)?$" <<<"$installed"; then
            cmd="rustup component add $c --toolchain nightly"
            if ((install)); then
                say "installing $c: $cmd"
                $cmd >&2 || fail "nightly component $c (install failed)" "$cmd"
            else
                fail "nightly component $c" "$cmd"
            fi
        fi
    done
fi

# --- QEMU: boots the kernel for the main job and for tests/guest.py. ---
if [[ "$purpose" != build ]]; then
    # seabios is named because pc/q35 need bios-256k.bin and apt would only
    # pull it in as a recommendation; microvm's qboot and pvh.bin come with
    # qemu-system-data, a hard dependency.
    apt_cmd="apt-get update && apt-get install -y --no-install-recommends qemu-system-x86 seabios"
    if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
        if ((install)) && [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
            say "installing QEMU: $apt_cmd"
            if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                    qemu-system-x86 seabios >&2; }; then
                fail "qemu-system-x86_64 (apt-get failed)" "$apt_cmd"
            fi
        elif [[ "$(id -u)" != 0 ]]; then
            fail "qemu-system-x86_64 (not root, so not installing it)" "sudo sh -c '$apt_cmd'"
        else
            fail "qemu-system-x86_64" "$apt_cmd"
        fi
    fi
    if command -v qemu-system-x86_64 >/dev/null 2>&1; then
        ver="$(qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')"
        read -r major minor <<<"${ver:-0 0}"
        # 7.2 is the oldest QEMU this was checked on (PVH on pc, q35 and microvm).
        if ((major < 7 || (major == 7 && minor < 2))); then
            fail "QEMU 7.2 or newer (found ${major}.${minor})" "$apt_cmd"
        fi
        if [[ ! -e /usr/share/seabios/bios-256k.bin && ! -e /usr/share/qemu/bios-256k.bin ]]; then
            say "warning: SeaBIOS (bios-256k.bin) not found; pc and q35 will not boot, microvm will ($apt_cmd)"
        fi
    fi
fi

# --- python3 >= 3.11 runs tests/guest.py (stdlib only). ---
if [[ "$purpose" == test ]]; then
    if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        fail "python3 3.11 or newer (tests/guest.py)" "apt-get install -y python3"
    fi
fi

if ((missing)); then
    say "not ready for '$purpose' (see MISSING lines above)"
    exit 1
fi
exit 0

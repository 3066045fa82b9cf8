#!/usr/bin/env bash
# Builds hyperbatch and boots it under cloud-hypervisor; exits with the
# guest's status. The same contract as scripts/run-qemu.sh, on another VMM.
#
#   scripts/run-ch.sh [options] [-- CMDLINE...]
#
#   --ch PATH           the cloud-hypervisor binary (default: $CLOUD_HYPERVISOR,
#                       else cloud-hypervisor on PATH)
#   --smp N             vCPUs (default 2)
#   --mem SIZE          guest RAM: a number with K, M or G (default 512M)
#   --timeout SECONDS   stop the guest and fail after this long (default 600,
#                       at most 999999999; 0 = never)
#   --no-build          do not build; boot the last build
#   --kernel PATH       boot this ELF instead of building (implies --no-build)
#   --log FILE          also keep the guest's serial output in FILE
#   -- CMDLINE...       the kernel command line (see scripts/run-qemu.sh), at
#                       most 2047 bytes
#
# cloud-hypervisor loads the PVH entry of the ELF (--kernel), puts COM1 on its
# stdout (--serial tty; --console off drops the virtio console) and exits 0
# when the guest powers off through ACPI. It has no isa-debug-exit device, so
# the guest's status comes from its `HB {"event":"exit","status":N}` line.
# It needs KVM: /dev/kvm readable and writable.
#
# Exit status: as scripts/run-qemu.sh (0 success, 1-123 the guest's failure
# status, 124 timeout, 125 no HB exit line or the guest reset, 126 the VMM failed,
# 128+N stopped by signal N, 2 a bad option).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HB_TOOL=run-ch
# shellcheck source=scripts/lib.sh
source "$root/scripts/lib.sh"

ch="${CLOUD_HYPERVISOR:-}"
smp=2
mem=512M
timeout=600
build=1
kernel=""
log=""
cmdline=()

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while (($#)); do
    case "$1" in
    --ch | --smp | --mem | --timeout | --kernel | --log)
        if [[ $# -lt 2 || -z "$2" ]]; then
            hb_say "$1 needs a value (see --help)"
            exit 2
        fi
        case "$1" in
        --ch) ch="$2" ;;
        --smp) smp="$2" ;;
        --mem) mem="$2" ;;
        --timeout) timeout="$2" ;;
        --kernel) kernel="$2" build=0 ;;
        --log) log="$2" ;;
        esac
        shift 2
        ;;
    --no-build) build=0 && shift ;;
    -h | --help) usage && exit 0 ;;
    --)
        shift
        cmdline=("$@")
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
# cloud-hypervisor's sizes take only K, M and G suffixes.
[[ "$mem" =~ ^[1-9][0-9]*[KMG]?$ ]] || {
    hb_say "--mem must look like 512M or 1G, not '$mem'"
    exit 2
}
# At most 9 digits: lib.sh keeps the deadline in microseconds in 64-bit
# shell arithmetic.
[[ "$timeout" =~ ^[0-9]{1,9}$ ]] || {
    hb_say "--timeout must be whole seconds, at most 999999999 (0 = never), not '$timeout'"
    exit 2
}
# CMDLINE_MAX in src/core/pvh.rs: 2048 bytes with the NUL.
CMDLINE_MAX_BYTES=2047
cmdline_bytes="$(printf '%s' "${cmdline[*]}" | wc -c)"
if ((cmdline_bytes > CMDLINE_MAX_BYTES)); then
    hb_say "the kernel command line is $cmdline_bytes bytes; hyperbatch accepts at most" \
        "$CMDLINE_MAX_BYTES (CMDLINE_MAX in src/core/pvh.rs, with its NUL)"
    exit 2
fi

# ---- the VMM ----
if [[ -z "$ch" ]]; then
    ch="$(command -v cloud-hypervisor || true)"
fi
if [[ -z "$ch" || ! -x "$ch" ]]; then
    hb_say "cloud-hypervisor not found${ch:+ at $ch}."
    hb_say "It is in no package registry these machines reach (not Debian's, not crates.io"
    hb_say "as a binary). Build it from its source repository"
    hb_say "(github.com/cloud-hypervisor/cloud-hypervisor), at a release tag:"
    hb_say "  git clone <that repository> ch && cd ch && git checkout v53.0"
    hb_say "  cargo build --release      # about 20+ minutes on 2 cores"
    hb_say "then pass --ch ch/target/release/cloud-hypervisor or set CLOUD_HYPERVISOR."
    exit 2
fi
if [[ ! -e /dev/kvm ]]; then
    hb_say "cloud-hypervisor needs KVM and /dev/kvm does not exist"
    exit 2
elif [[ ! -r /dev/kvm || ! -w /dev/kvm ]]; then
    hb_say "cloud-hypervisor needs /dev/kvm readable and writable by $(id -un)"
    exit 2
fi

# ---- the kernel ----
if ((build)); then
    kernel="$("$root/scripts/build.sh")"
elif [[ -z "$kernel" ]]; then
    kernel="${CARGO_TARGET_DIR:-$root/target}/target/release/hyperbatch"
fi
if [[ ! -f "$kernel" ]]; then
    hb_say "no kernel at $kernel (build it with scripts/build.sh, or drop --no-build)"
    exit 2
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
serial="${log:-$tmp/serial}"
: >"$serial"

vmm=(
    "$ch"
    --kernel "$kernel"
    --cmdline "${cmdline[*]}"
    --cpus "boot=$smp"
    --memory "size=$mem"
    --serial tty
    --console off
)
hb_say "$(hb_show "${vmm[@]}")"
hb_say "$("$ch" --version 2>&1 | head -n 1)"

# With --serial tty, COM1 is cloud-hypervisor's stdout. A triple fault makes it
# log "Guest likely triple-faulted" and reboot the VM (it has no -no-reboot),
# so that line, or a second boot line, ends the run early.
VM_STDOUT="$serial"
VM_STDERR="$tmp/ch.stderr"
VM_STDERR_STOP_RE='triple-fault'
vm_run "$timeout" "$serial" 1 "$HB_BOOT_RE" 2 -- "${vmm[@]}"

status="$(hb_exit_status "$serial")"
if ((VM_TIMED_OUT)); then
    hb_say "TIMEOUT: the guest ran for ${timeout} s without exiting; cloud-hypervisor was stopped"
    hb_tail "$serial" 40
    exit 124
fi
if ((VM_WATCHED)); then
    hb_say "FAILED: the guest reset (triple fault?) and cloud-hypervisor rebooted it; stopped it"
    hb_tail "$serial" 40
    exit 125
fi
if ((VM_RC != 0)); then
    hb_say "FAILED: cloud-hypervisor exited $VM_RC (its messages are above)"
    hb_tail "$serial" 40
    exit 126
fi
if [[ -z "$status" ]]; then
    hb_say "FAILED: the VM stopped without an HB exit line"
    hb_tail "$serial" 40
    exit 125
fi
if ((status == 0)); then
    hb_say "guest exit status 0 (ACPI poweroff, ${VM_SECONDS} s)"
    exit 0
fi
hb_say "guest exit status $status: FAILURE (ACPI poweroff, ${VM_SECONDS} s)"
((status > 0 && status < 124)) && exit "$status"
exit 1

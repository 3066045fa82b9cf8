#!/usr/bin/env bash
# Builds hyperbatch and boots it under QEMU; exits with the guest's status.
#
#   scripts/run-qemu.sh [options] [-- CMDLINE...]
#
#   --machine microvm|pc|q35  machine type (default microvm: no firmware to
#                             speak of, the fastest boot)
#   --accel auto|tcg|kvm      default auto: KVM only where it runs ring-0 code at
#                             hardware speed (a probe boot decides, cached in
#                             target/accel-probe), else TCG
#   --icount                  count instead of time: TCG, single-threaded, with
#                             -icount shift=0,sleep=off,align=off, so the guest
#                             TSC advances by one per guest instruction (every
#                             vCPU's) and two boots print identical figures;
#                             adds `icount` to the kernel command line
#   --cpu MODEL               QEMU CPU model (default: max under TCG,
#                             host,-arch-capabilities under KVM)
#   --smp N                   vCPUs (default 2)
#   --mem SIZE                guest RAM, QEMU syntax (default 512M; a bare
#                             number is MiB); at least the kernel image's end
#                             rounded up to a MiB (about 3M)
#   --timeout SECONDS         stop the guest and fail after this long (default
#                             600, at most 999999999; 0 = never; with --gdb
#                             the default is never)
#   --gdb                     start paused with a gdb stub on :1234 (-s -S)
#   --no-build                do not build; boot the last build
#   --kernel PATH             boot this ELF instead of building (implies --no-build)
#   --log FILE                also keep the guest's serial output in FILE
#   -- CMDLINE...             the kernel command line, e.g. run=test test=paging
#                             (keys: run=boot|test|bench|stress|probe, test=NAME,
#                             pv=immediate|batched, seed=N, ops=N, quick), at
#                             most 2047 bytes in all
#
# The guest's serial console (COM1) streams to stdout; this script's own
# messages go to stderr. Exit status:
#   0       the guest reported success
#   1-123   the guest reported that failure status
#   124     timeout: the guest was stopped (the last serial lines are printed)
#   125     the VM ended without an HB exit line (a triple fault under
#           -no-reboot looks like this), or its two reports disagreed
#   126     QEMU itself failed (its error is above)
#   128+N   QEMU or this script was stopped by signal N from outside
#           (130: SIGINT, 143: SIGTERM); the guest did not finish
#   2       a bad option (nothing was booted)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HB_TOOL=run-qemu
# shellcheck source=scripts/lib.sh
source "$root/scripts/lib.sh"

machine=microvm
accel=auto
cpu=""
smp=2
mem=512M
timeout=""
gdb=0
icount=0
build=1
kernel=""
log=""
cmdline=()

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
need() { [[ $# -ge 2 && -n "$2" ]] || {
    hb_say "$1 needs a value (see --help)"
    exit 2
}; }
while (($#)); do
    case "$1" in
    --machine | --accel | --cpu | --smp | --mem | --timeout | --kernel | --log)
        need "$@"
        case "$1" in
        --machine) machine="$2" ;;
        --accel) accel="$2" ;;
        --cpu) cpu="$2" ;;
        --smp) smp="$2" ;;
        --mem) mem="$2" ;;
        --timeout) timeout="$2" ;;
        --kernel) kernel="$2" build=0 ;;
        --log) log="$2" ;;
        esac
        shift 2
        ;;
    --gdb) gdb=1 && shift ;;
    --icount) icount=1 && shift ;;
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

case "$machine" in
# microvm: qboot boots the PVH entry directly. acpi=on gives the kernel a
# MADT to find its CPUs and a FADT for S5 poweroff; isa-serial is COM1;
# option ROMs are only needed for Linux boot protocols.
microvm) machine_opt="microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=on" ;;
# pc and q35: SeaBIOS runs pvh.bin, which enters the PVH entry.
pc | q35) machine_opt="$machine" ;;
*)
    hb_say "--machine must be microvm, pc or q35, not '$machine'"
    exit 2
    ;;
esac
[[ "$smp" =~ ^[1-9][0-9]*$ ]] || {
    hb_say "--smp must be a positive number, not '$smp'"
    exit 2
}
# At most 12 digits: the size in bytes must fit the shell's 64-bit arithmetic.
[[ "$mem" =~ ^[1-9][0-9]{0,11}[KMGT]?$ ]] || {
    hb_say "--mem must look like 512M or 1G (at most 12 digits), not '$mem'"
    exit 2
}
case "$mem" in
*K) mem_bytes=$((${mem%K} << 10)) ;;
*G) mem_bytes=$((${mem%G} << 30)) ;;
*T) mem_bytes=$((${mem%T} << 40)) ;;
*) mem_bytes=$((${mem%M} << 20)) ;; # QEMU reads a bare number as MiB
esac
if [[ -z "$timeout" ]]; then
    timeout=600
    ((gdb)) && timeout=0
fi
# At most 9 digits: the deadline is kept in microseconds in 64-bit shell
# arithmetic, which a 13-digit timeout overflows.
[[ "$timeout" =~ ^[0-9]{1,9}$ ]] || {
    hb_say "--timeout must be whole seconds, at most 999999999 (0 = never), not '$timeout'"
    exit 2
}
[[ -z "$cpu" || "$cpu" =~ ^[A-Za-z0-9_.,+=-]+$ ]] || {
    hb_say "--cpu must be a QEMU CPU model such as max or qemu32, not '$cpu'"
    exit 2
}
# pvh.rs's CMDLINE_MAX: 2048 bytes with the NUL. Longer lines fail in the
# kernel at best; on pc and q35 QEMU's PVH option ROM copies a long line over
# hvm_start_info itself (a bad magic at 4 KiB, a silent hang at 64 KiB).
CMDLINE_MAX_BYTES=2047
cmdline_bytes="$(printf '%s' "${cmdline[*]}" | wc -c)"
if ((cmdline_bytes > CMDLINE_MAX_BYTES)); then
    hb_say "the kernel command line is $cmdline_bytes bytes; hyperbatch accepts at most" \
        "$CMDLINE_MAX_BYTES (CMDLINE_MAX in src/core/pvh.rs, with its NUL)"
    exit 2
fi
case "$accel" in auto | tcg | kvm) ;; *)
    hb_say "--accel must be auto, tcg or kvm, not '$accel'"
    exit 2
    ;;
esac
if ((icount)); then
    # Counting is a TCG feature: KVM runs guest code on the CPU, where
    # QEMU cannot count it.
    if [[ "$accel" == kvm ]]; then
        hb_say "--icount needs TCG: QEMU counts instructions only when it translates them (drop --accel kvm)"
        exit 2
    fi
    accel=tcg
    cmdline+=(icount)
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

# The guest cannot even hold the kernel when RAM ends below the image: it
# then dies before its first message. The image's end is the highest end of
# its PT_LOAD segments (bss included).
if ! image_end="$(python3 - "$kernel" <<'EOF'
import struct, sys
with open(sys.argv[1], "rb") as f:
    elf = f.read()
if elf[:4] != b"\x7fELF" or len(elf) < 64 or elf[4] != 2:
    sys.exit(f"{sys.argv[1]} is not a 64-bit ELF")
(phoff,) = struct.unpack_from("<Q", elf, 0x20)
phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
end = 0
for i in range(phnum):
    at = phoff + i * phentsize
    if at + 56 > len(elf):
        sys.exit(f"{sys.argv[1]}: program header {i} lies beyond the file")
    p_type, _, _, _, p_paddr, _, p_memsz, _ = struct.unpack_from("<IIQQQQQQ", elf, at)
    if p_type == 1:  # PT_LOAD
        end = max(end, p_paddr + p_memsz)
print(end)
EOF
)"; then
    hb_say "cannot read the kernel's program headers (above)"
    exit 2
fi
MIB=$((1 << 20))
mem_min=$(((image_end + MIB - 1) / MIB * MIB))
if ((mem_bytes < mem_min)); then
    hb_say "--mem $mem is too small: the kernel image alone reaches" \
        "$((image_end / 1024)) KiB, so the guest needs at least $((mem_min / MIB))M"
    exit 2
fi
"$root/scripts/setup.sh" --for qemu

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Under KVM, `-cpu host` aborts on hosts whose KVM refuses the
# IA32_ARCH_CAPABILITIES value QEMU writes (seen on nested KVM); the guest does
# not use that MSR, so leave it out everywhere.
KVM_CPU="host,-arch-capabilities"

# ---- --accel auto: is KVM worth it here? ----
# A nested KVM without hardware virtualization underneath interprets ring-0
# guest code, hundreds of times slower than TCG, and hangs on vmcall. The
# kernel's run=probe times a tight loop and prints
#   HB {"event":"probe","loop_cycles":N,"iters":M}
# Real hardware takes a few cycles per iteration.
PROBE_MAX_CYCLES_PER_ITER=50
PROBE_TIMEOUT="${HB_PROBE_TIMEOUT:-15}"

probe_kvm() {
    # Prints "kvm" or "tcg" then a reason, on one line.
    local serial="$tmp/probe.serial" line cycles iters
    : >"$serial"
    vm_run "$PROBE_TIMEOUT" "$serial" 0 '^HB \{.*"event" *: *"probe"' 1 -- \
        qemu-system-x86_64 -machine "microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=on" \
        -accel kvm -cpu "$KVM_CPU" -smp 1 -m 128M \
        -display none -nodefaults -no-reboot \
        -chardev "file,id=hbser,path=$serial,append=on" -serial chardev:hbser \
        -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
        -kernel "$kernel" -append "run=probe" 2>"$tmp/probe.stderr"
    line="$(tr -d '\r' <"$serial" | grep -aE '^HB \{.*"event" *: *"probe"' | head -n 1 || true)"
    cycles="$(sed -nE 's/.*"loop_cycles" *: *([0-9]+).*/\1/p' <<<"$line")"
    iters="$(sed -nE 's/.*"iters" *: *([0-9]+).*/\1/p' <<<"$line")"
    if [[ -n "$cycles" && -n "$iters" && "$iters" -gt 0 ]]; then
        if ((cycles < PROBE_MAX_CYCLES_PER_ITER * iters)); then
            echo "kvm 1 KVM probe: $((cycles / iters)) cycles per loop iteration, hardware speed"
        else
            echo "tcg 1 KVM probe: $((cycles / iters)) cycles per loop iteration" \
                "(hardware needs a few): this KVM interprets ring-0 code (nested without" \
                "hardware virtualization?), so TCG is faster"
        fi
    elif ((VM_TIMED_OUT)); then
        echo "tcg 0 KVM probe boot printed no probe line within ${PROBE_TIMEOUT} s" \
            "(KVM interpreting ring 0 is that slow, or the kernel lacks run=probe)"
    else
        echo "tcg 0 KVM probe boot failed (QEMU exit $VM_RC: $(head -c 200 "$tmp/probe.stderr" | tr '\n' ' '))"
    fi
}

if [[ "$accel" == auto ]]; then
    if [[ ! -e /dev/kvm ]]; then
        accel=tcg
        hb_say "using TCG: /dev/kvm does not exist"
    elif [[ ! -r /dev/kvm || ! -w /dev/kvm ]]; then
        accel=tcg
        hb_say "using TCG: /dev/kvm is not readable and writable by $(id -un)"
    else
        # A measured verdict is a fact about this host until it reboots; a
        # probe that printed nothing may be the kernel's fault, so that one
        # only holds for the kernel build it was made with.
        cache="$root/target/accel-probe"
        host_key="$(cat /proc/sys/kernel/random/boot_id 2>/dev/null || echo unknown)"
        kernel_key="$(stat -c '%n:%Y:%s' "$kernel")"
        verdict=""
        if [[ -r "$cache" ]]; then
            read -r c_host c_kernel c_accel c_measured c_reason <"$cache" || true
            if [[ "${c_host:-}" == "$host_key" && ("${c_measured:-}" == 1 || "${c_kernel:-}" == "$kernel_key") ]]; then
                verdict="$c_accel"
                reason="${c_reason:-} (cached in $cache)"
            fi
        fi
        if [[ -z "$verdict" ]]; then
            hb_say "probing KVM (at most ${PROBE_TIMEOUT} s; the verdict is cached)..."
            read -r verdict measured reason <<<"$(probe_kvm)"
            mkdir -p "$(dirname "$cache")"
            echo "$host_key $kernel_key $verdict $measured $reason" >"$cache"
        fi
        accel="$verdict"
        if [[ "$accel" == kvm ]]; then
            hb_say "using KVM: $reason"
        else
            hb_say "using TCG, not KVM: $reason"
        fi
    fi
fi

if [[ "$accel" == kvm ]]; then
    accel_args=(-accel kvm -cpu "${cpu:-$KVM_CPU}")
else
    # -cpu max gives TCG 1 GiB pages and INVPCID, but on QEMU 7.2 no x2APIC:
    # the boot record says xapic (only KVM rows exercise x2APIC).
    # With more vCPUs than host CPUs, multi-threaded TCG pays a host time
    # slice for every cross-vCPU wait: a vCPU spinning on PAUSE for an
    # acknowledgement keeps its host thread, so each TLB shootdown round
    # waits until the host has run every target (about 10 ms here, 50x the
    # whole run=stress in round-robin TCG, which moves to the next vCPU at a
    # PAUSE). HB_TCG_THREAD=single|multi overrides the choice.
    tcg_thread="${HB_TCG_THREAD:-}"
    if ((icount)); then
        # QEMU refuses multi-threaded TCG with icount.
        if [[ "$tcg_thread" == multi ]]; then
            hb_say "--icount needs single-threaded TCG; HB_TCG_THREAD=multi cannot apply"
            exit 2
        fi
        tcg_thread=single
    elif [[ -z "$tcg_thread" ]]; then
        # Count only the host CPUs that are not busy already (the 1-minute
        # load average): on a shared machine a vCPU thread waits for a busy
        # CPU just as it waits for a missing one. A 40,000-operation stress
        # at 2 vCPUs took 70 s instead of 2 on 2 CPUs at load 8.
        load="$(cut -d ' ' -f 1 /proc/loadavg 2>/dev/null || echo 0)"
        free=$(($(nproc) - ${load%%.*}))
        ((free < 1)) && free=1
        tcg_thread=multi
        ((smp > free)) && tcg_thread=single
    fi
    accel_args=(-accel "tcg,thread=$tcg_thread" -cpu "${cpu:-max}")
    ((icount)) && accel_args+=(-icount shift=0,sleep=off,align=off)
fi

serial="${log:-$tmp/serial}"
: >"$serial"
qemu=(
    qemu-system-x86_64
    -machine "$machine_opt" "${accel_args[@]}"
    -smp "$smp" -m "$mem"
    -display none -nodefaults -no-reboot
    # append=on: the file was emptied above and is already being followed.
    -chardev "file,id=hbser,path=$serial,append=on" -serial chardev:hbser
    # The kernel writes its exit status here; QEMU exits with (status << 1) | 1.
    -device "isa-debug-exit,iobase=0xf4,iosize=0x04"
    -kernel "$kernel" -append "${cmdline[*]}"
)
if ((gdb)); then
    qemu+=(-s -S)
    hb_say "QEMU waits for gdb on localhost:1234; attach with"
    hb_say "  gdb $kernel -ex 'target remote :1234'"
    hb_say "Use hbreak: the firmware copies the kernel in from fw_cfg after gdb attaches,"
    hb_say "over any software breakpoint already planted."
fi
hb_say "$(hb_show "${qemu[@]}")"

qemu_stderr="$tmp/qemu.stderr"
VM_STDERR="$qemu_stderr" vm_run "$timeout" "$serial" 1 "" 0 -- "${qemu[@]}"

status="$(hb_exit_status "$serial")"
if ((VM_TIMED_OUT)); then
    hb_say "TIMEOUT: the guest ran for ${timeout} s without exiting; QEMU was stopped"
    hb_tail "$serial" 40
    exit 124
fi

# A signal from outside (a test runner's timeout, a user's kill) makes QEMU
# print "terminating on signal N" and exit 0, which would otherwise read as
# a guest reset.
signal="$(sed -nE 's/.*terminating on signal ([0-9]+).*/\1/p' "$qemu_stderr" | head -n 1)"
if [[ -n "$signal" && -z "$status" ]]; then
    hb_say "STOPPED: QEMU was stopped by signal $signal from outside (its message is above);" \
        "the guest did not finish"
    hb_tail "$serial" 40
    exit $((128 + signal))
fi

# isa-debug-exit makes QEMU exit with (status << 1) | 1, so an odd exit status
# is the guest's; 0 is an ACPI poweroff or, under -no-reboot, a reset.
rc="$VM_RC"
if ((rc % 2 == 1 && rc < 128)); then
    device_status=$((rc >> 1))
    if [[ -z "$status" ]]; then
        if ((rc == 1)) && [[ ! -s "$serial" ]]; then
            # QEMU's own errors also exit 1, and they leave serial empty.
            hb_say "FAILED: QEMU exited 1 and the guest printed nothing: QEMU refused to start" \
                "(its error is above), or the kernel never reached its serial console"
            exit 126
        fi
        hb_say "FAILED: the guest wrote status $device_status to isa-debug-exit without an HB exit line"
        hb_tail "$serial" 40
        exit 125
    fi
    if ((status != device_status)); then
        hb_say "FAILED: the HB exit line says status $status, isa-debug-exit says $device_status"
        hb_tail "$serial" 40
        exit 125
    fi
    how="isa-debug-exit"
elif ((rc == 0)); then
    if [[ -z "$status" ]]; then
        hb_say "FAILED: the VM stopped without an HB exit line: the guest reset (a triple" \
            "fault stops QEMU under -no-reboot) or powered off without reporting"
        hb_tail "$serial" 40
        exit 125
    fi
    how="ACPI poweroff"
else
    hb_say "FAILED: QEMU failed with exit status $rc (see its messages above)"
    hb_tail "$serial" 40
    exit 126
fi

if ((status == 0)); then
    hb_say "guest exit status 0 ($how, $accel, ${VM_SECONDS} s)"
    exit 0
fi
hb_say "guest exit status $status: FAILURE ($how, $accel, ${VM_SECONDS} s)"
((status > 0 && status < 124)) && exit "$status"
exit 1

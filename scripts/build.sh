#!/usr/bin/env bash
# Builds the hyperbatch kernel (a PVH ELF) and prints its path on stdout.
#
#   scripts/build.sh [--debug] [--clippy] [--no-setup]
#
#   --debug     the dev profile instead of release
#   --clippy    run clippy (-D warnings) on the kernel binary instead of building it
#   --no-setup  skip scripts/setup.sh (the caller already ran it)
#
# Everything except the kernel's path goes to stderr, so callers can write
# `kernel="$(scripts/build.sh)"`. After building it checks the PVH entry note
# that QEMU and cloud-hypervisor look for, because a kernel without it (or with
# it 8-byte aligned, which QEMU 7.2 misreads) hangs before printing anything.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
profile=release
mode=build
setup=1
while (($#)); do
    case "$1" in
    --debug) profile=dev ;;
    --clippy) mode=clippy ;;
    --no-setup) setup=0 ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "build.sh: unknown option '$1' (see --help)" >&2
        exit 2
        ;;
    esac
    shift
done

if ((setup)); then
    "$root/scripts/setup.sh" --for build
fi

cd "$root"
# The kernel's target is a JSON spec (target.json), so core and
# compiler_builtins are rebuilt from rust-src; compiler-builtins-mem supplies
# memcpy/memset, which no libc provides here.
cargo_flags=(
    --bin hyperbatch
    --target target.json
    "-Zbuild-std=core,compiler_builtins"
    -Zbuild-std-features=compiler-builtins-mem
    -Zjson-target-spec
)
[[ "$profile" == release ]] && cargo_flags+=(--release)

if [[ "$mode" == clippy ]]; then
    echo "build: cargo +nightly clippy ${cargo_flags[*]} -- -D warnings" >&2
    exec cargo +nightly clippy "${cargo_flags[@]}" -- -D warnings
fi

echo "build: cargo +nightly build ${cargo_flags[*]}" >&2
# Cargo names the artifact in its JSON messages; that is sturdier than guessing
# the layout under target/ (it depends on CARGO_TARGET_DIR and the spec's name).
messages="$(mktemp)"
trap 'rm -f "$messages"' EXIT
if ! cargo +nightly build "${cargo_flags[@]}" --message-format=json-render-diagnostics >"$messages"; then
    echo "build: FAILED: the kernel did not build (cargo's errors are above)" >&2
    exit 1
fi

python3 - "$messages" <<'EOF'
"""Finds the kernel in cargo's messages and checks its PVH entry note."""
import json
import struct
import sys

kernel = None
with open(sys.argv[1]) as messages:
    for line in messages:
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        target = msg.get("target", {})
        if msg.get("reason") == "compiler-artifact" and target.get("name") == "hyperbatch" \
                and "bin" in target.get("kind", []) and msg.get("executable"):
            kernel = msg["executable"]
if kernel is None:
    sys.exit("build: FAILED: cargo reported no hyperbatch executable")

# Xen's public/elfnote.h: the PVH 32-bit entry point, read by QEMU's -kernel
# loader and by cloud-hypervisor's --kernel loader.
XEN_ELFNOTE_PHYS32_ENTRY = 18
PT_NOTE = 4

with open(kernel, "rb") as f:
    elf = f.read()
if elf[:4] != b"\x7fELF" or elf[4] != 2:
    sys.exit(f"build: FAILED: {kernel} is not a 64-bit ELF")
(phoff,) = struct.unpack_from("<Q", elf, 0x20)
phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
found = None
for i in range(phnum):
    p_type, _, p_offset, _, _, p_filesz, _, p_align = struct.unpack_from(
        "<IIQQQQQQ", elf, phoff + i * phentsize)
    if p_type != PT_NOTE:
        continue
    pos, end = p_offset, p_offset + p_filesz
    while pos + 12 <= end:
        namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
        name = elf[pos + 12:pos + 12 + namesz].rstrip(b"\0")
        desc_at = pos + 12 + ((namesz + 3) & ~3)
        if name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY:
            found = (p_align, struct.unpack_from("<I", elf, desc_at)[0])
        pos = desc_at + ((descsz + 3) & ~3)
if found is None:
    sys.exit(f"build: FAILED: {kernel} has no Xen PHYS32_ENTRY note in a PT_NOTE "
             "segment; QEMU and cloud-hypervisor cannot boot it through PVH")
align, entry = found
if align != 4:
    sys.exit(f"build: FAILED: the PVH note's PT_NOTE segment is {align}-byte aligned; "
             "QEMU 7.2 reads the entry from the wrong offset unless it is 4")
print(f"build: {kernel} (PVH entry {entry:#x})", file=sys.stderr)
print(kernel)
EOF

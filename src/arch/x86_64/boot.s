# PVH entry: the Xen ELF note that names the 32-bit entry point, and the path
# from 32-bit protected mode into long mode and Rust.
#
# The PVH boot ABI (Xen's docs/misc/pvh.pandoc) enters at the PHYS32_ENTRY
# address with paging off, flat 32-bit segments, interrupts off, no valid
# stack, and the physical address of `hvm_start_info` in EBX.
#
# Operands (arch/x86_64/mod.rs): rust_entry, ap_entry and handoff (sym);
# stack_size and the handoff_* field offsets of smp::ApHandoff (const).


# The note must be 4-byte aligned: QEMU 7.2 reads the entry from the wrong
# offset when it is 8-byte aligned and the guest then hangs silently.
.section .note.xen, "a"
.balign 4
    .long 4                     # namesz: "Xen\0"
    .long 4                     # descsz: a 32-bit physical entry address
    .long 18                    # XEN_ELFNOTE_PHYS32_ENTRY (xen/include/public/elfnote.h)
    .asciz "Xen"
    .balign 4
    .long pvh_start32
    .balign 4

.section .text.boot, "ax"
.code32
.global pvh_start32
pvh_start32:
    cli
    cld
    mov esi, ebx                    # keep the start_info address

    # Long mode and NX are required; say so on COM1 rather than triple-fault.
    mov eax, 0x80000000
    cpuid
    cmp eax, 0x80000001
    jb .Lno_long_mode
    mov eax, 0x80000001
    cpuid
    bt edx, 29                      # LM
    jnc .Lno_long_mode

    # Zero .bss: QEMU's ELF loader does, but the PVH ABI does not promise it.
    # The boot stack and the boot page tables live there.
    mov edi, offset __bss_start
    mov ecx, offset __bss_end
    sub ecx, edi
    xor eax, eax
    rep stosb

    # Boot page tables: the first 4 GiB identity-mapped with 2 MiB pages,
    # enough to reach the kernel, start_info, ACPI tables and the LAPIC until
    # the Rust side builds the real tables (memory.rs).
    mov eax, offset boot_pdpt
    or eax, 0x3                     # present | writable
    mov [boot_pml4], eax
    xor ecx, ecx
1:  mov eax, ecx
    shl eax, 12
    add eax, offset boot_pd
    or eax, 0x3
    mov [boot_pdpt + ecx * 8], eax
    inc ecx
    cmp ecx, 4
    jb 1b
    xor ecx, ecx
2:  mov eax, ecx
    shl eax, 21
    or eax, 0x83                    # present | writable | 2 MiB page
    mov [boot_pd + ecx * 8], eax
    inc ecx
    cmp ecx, 2048
    jb 2b

    mov eax, cr4
    or eax, 1 << 5                  # CR4.PAE
    mov cr4, eax
    mov eax, offset boot_pml4
    mov cr3, eax

    # EFER.LME, and EFER.NXE where the CPU has NX (CPUID 0x80000001 EDX[20]);
    # the Rust side refuses to run without it, with a message.
    mov edi, edx
    mov ecx, 0xC0000080             # IA32_EFER
    rdmsr
    or eax, 1 << 8                  # LME
    bt edi, 20
    jnc 3f
    or eax, 1 << 11                 # NXE
3:  wrmsr

    mov eax, cr0
    or eax, (1 << 31) | (1 << 16)   # CR0.PG | CR0.WP
    mov cr0, eax

    lgdt [boot_gdt_ptr]
    .byte 0xea                      # ljmp 0x08:boot_long_mode
    .long boot_long_mode
    .word 0x08                      # 64-bit code selector

# No Rust can run: print the reason and the exit record power.rs would,
# then leave through isa-debug-exit, so the host sees a failure at once
# instead of waiting out its timeout. Without that device, halt.
.Lno_long_mode:
    mov esi, offset .Lno_lm_msg
    mov dx, 0x3f8
4:  lodsb
    test al, al
    jz 5f
    out dx, al
    jmp 4b
5:  mov dx, {debug_exit_port}
    mov eax, {exit_failure}
    out dx, eax
9:  cli
    hlt
    jmp 9b

.code64
boot_long_mode:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    lea rsp, [rip + boot_stack + {stack_size}]
    mov edi, esi                    # start_info address, zero-extended
    xor ebp, ebp
    call {rust_entry}
6:  cli
    hlt
    jmp 6b

# Application processors arrive here from the real-mode trampoline
# (trampoline.s), in long mode on the boot page tables. The BSP filled
# AP_HANDOFF before sending the SIPI and waits for this CPU to copy it.
.global ap_long_mode
ap_long_mode:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    # Claim the hand-off before touching its stack: a CPU that timed out
    # and arrives late must not run on the stack of the CPU started after it.
    mov eax, 1
    xchg rax, [rip + {handoff} + {handoff_claimed}]
    test rax, rax
    jnz 8f
    mov rax, [rip + {handoff} + {handoff_cr3}]      # final page-table root
    mov cr3, rax
    mov rsp, [rip + {handoff} + {handoff_stack}]    # top of this CPU's guarded stack
    mov rdi, [rip + {handoff} + {handoff_index}]    # CPU index
    xor ebp, ebp
    call {ap_entry}
7:  cli
    hlt
    jmp 7b
8:  cli                             # too late: the boot CPU gave up on us
    hlt
    jmp 8b

.section .rodata.boot, "a"
# `{{` is a literal brace: this file is a format string (global_asm!).
.Lno_lm_msg:
    .ascii "hyperbatch: this CPU has no long mode (CPUID 0x80000001 EDX[29]); "
    .ascii "hyperbatch needs an x86-64 CPU\r\n"
    .asciz "HB {{\"event\":\"exit\",\"status\":{exit_failure}}}\r\n"

.balign 8
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff        # 0x08: 64-bit code
    .quad 0x00cf92000000ffff        # 0x10: data
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

.section .bss.boot, "aw", @nobits
.balign 4096
.global boot_pml4
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4096 * 4
.balign 16
boot_stack:
    .skip {stack_size}

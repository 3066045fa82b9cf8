# The SMP trampoline: real mode → protected mode → long mode for application
# processors. smp.rs copies the bytes between ap_trampoline_start and
# ap_trampoline_end to {base} (below 1 MiB, page-aligned) and sends a SIPI with
# vector {base} >> 12, so the AP starts at CS:IP = ({base} >> 4):0000.
#
# Addresses inside the copy are {base} + (label - ap_trampoline_start);
# addresses of kernel symbols (boot_pml4, ap_long_mode) are absolute and stay
# valid because the kernel is identity-mapped below 4 GiB.
#
# Operands: {base} (const).

.section .rodata.trampoline, "a"
.balign 16
.global ap_trampoline_start
.global ap_trampoline_end

.code16
ap_trampoline_start:
    cli
    cld
    xor ax, ax
    mov ds, ax
    .byte 0x0f, 0x01, 0x16                  # lgdt [disp16]: the assembler cannot
    .word {base} + (ap_gdt_ptr - ap_trampoline_start) # take a label difference there
    mov eax, cr0
    or eax, 1                               # CR0.PE
    mov cr0, eax
    .byte 0x66, 0xea                        # ljmp 0x08:ap_protected (32-bit offset)
    .long {base} + (ap_protected - ap_trampoline_start)
    .word 0x08

.code32
ap_protected:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov eax, cr4
    or eax, 1 << 5                          # CR4.PAE
    mov cr4, eax
    mov eax, offset boot_pml4
    mov cr3, eax
    mov ecx, 0x80000001                     # NX as on the BSP (boot.s)
    mov eax, ecx
    cpuid
    mov edi, edx
    mov ecx, 0xC0000080                     # IA32_EFER
    rdmsr
    or eax, 1 << 8                          # LME
    bt edi, 20
    jnc 1f
    or eax, 1 << 11                         # NXE
1:  wrmsr
    mov eax, cr0
    or eax, (1 << 31) | (1 << 16)           # CR0.PG | CR0.WP
    mov cr0, eax
    .byte 0xea                              # ljmp 0x18:ap_long_mode
    .long ap_long_mode
    .word 0x18

.balign 8
ap_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff                # 0x08: 32-bit code
    .quad 0x00cf92000000ffff                # 0x10: data
    .quad 0x00af9a000000ffff                # 0x18: 64-bit code
ap_gdt_end:
ap_gdt_ptr:
    .word ap_gdt_end - ap_gdt - 1
    .long {base} + (ap_gdt - ap_trampoline_start)
ap_trampoline_end:

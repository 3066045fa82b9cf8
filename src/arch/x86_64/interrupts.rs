//! The IDT, the trap entry stubs, and what happens on each vector.
//!
//! Every vector we use enters one common stub that saves all general
//! registers into a [`TrapFrame`] and calls [`trap_dispatch`]. Exceptions are
//! fatal and print a full report, except in two places the kernel arms on
//! purpose: the fault probes ([`probe_read`], [`probe_write`],
//! [`probe_exec`]), which let tests touch memory that ought to fault and get
//! the fault back as a value, and the mm's fault-driven flush hook.

use super::percpu::{self, CpuLocal};
use super::{apic, gdt, power, serial};
use core::arch::naked_asm;
use core::cell::UnsafeCell;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use x86_64::registers::control::Cr2;
use x86_64::structures::idt::InterruptDescriptorTable;
use x86_64::VirtAddr;

/// The fixed vector for cross-CPU requests (smp.rs), TLB shootdowns among them.
pub const IPI_VECTOR: u8 = 0xf0;
/// The local APIC's spurious-interrupt vector; it needs no EOI.
pub const SPURIOUS_VECTOR: u8 = 0xff;

/// The registers saved on entry, in the order the common stub pushes them
/// (lowest address first).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    // Pushed by the CPU.
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// A fault that a probe caught instead of letting it kill the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub vector: u8,
    pub error_code: u64,
    /// The faulting linear address for #PF, else 0.
    pub addr: u64,
}

impl Fault {
    pub const PAGE_FAULT: u8 = 14;
}

impl core::fmt::Display for Fault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} (vector {}) error {:#x}",
            vector_name(self.vector),
            self.vector,
            self.error_code
        )?;
        if self.vector == Self::PAGE_FAULT {
            write!(f, " [{}] at {:#x}", pf_reason(self.error_code), self.addr)?;
        }
        Ok(())
    }
}

macro_rules! trap_stub {
    ($name:ident, $vector:expr, error_code) => {
        #[unsafe(naked)]
        extern "C" fn $name() {
            // The CPU pushed an error code; add the vector and join the common path.
            naked_asm!("push {v}", "jmp {common}", v = const $vector, common = sym trap_common)
        }
    };
    ($name:ident, $vector:expr) => {
        #[unsafe(naked)]
        extern "C" fn $name() {
            // No error code from the CPU: push a zero so every frame has the same shape.
            naked_asm!("push 0", "push {v}", "jmp {common}", v = const $vector, common = sym trap_common)
        }
    };
}

trap_stub!(vec0, 0);
trap_stub!(vec1, 1);
trap_stub!(vec2, 2);
trap_stub!(vec3, 3);
trap_stub!(vec4, 4);
trap_stub!(vec5, 5);
trap_stub!(vec6, 6);
trap_stub!(vec7, 7);
trap_stub!(vec8, 8, error_code);
trap_stub!(vec9, 9);
trap_stub!(vec10, 10, error_code);
trap_stub!(vec11, 11, error_code);
trap_stub!(vec12, 12, error_code);
trap_stub!(vec13, 13, error_code);
trap_stub!(vec14, 14, error_code);
trap_stub!(vec15, 15);
trap_stub!(vec16, 16);
trap_stub!(vec17, 17, error_code);
trap_stub!(vec18, 18);
trap_stub!(vec19, 19);
trap_stub!(vec20, 20);
trap_stub!(vec21, 21, error_code);
trap_stub!(vec22, 22);
trap_stub!(vec23, 23);
trap_stub!(vec24, 24);
trap_stub!(vec25, 25);
trap_stub!(vec26, 26);
trap_stub!(vec27, 27);
trap_stub!(vec28, 28);
trap_stub!(vec29, 29, error_code);
trap_stub!(vec30, 30, error_code);
trap_stub!(vec31, 31);
trap_stub!(vec_ipi, IPI_VECTOR);
trap_stub!(vec_pic_spurious_master, super::pic::PIC_VECTOR_BASE + 7);
trap_stub!(vec_pic_spurious_slave, super::pic::PIC_VECTOR_BASE + 15);
trap_stub!(vec_spurious, SPURIOUS_VECTOR);

const EXCEPTION_STUBS: [extern "C" fn(); 32] = [
    vec0, vec1, vec2, vec3, vec4, vec5, vec6, vec7, vec8, vec9, vec10, vec11, vec12, vec13, vec14,
    vec15, vec16, vec17, vec18, vec19, vec20, vec21, vec22, vec23, vec24, vec25, vec26, vec27,
    vec28, vec29, vec30, vec31,
];

/// Saves the general registers (the CPU has pushed its frame, the stub the
/// error code and vector), calls `trap_dispatch` with the frame, and returns
/// to wherever the frame now says. The CPU aligned RSP to 16 before pushing
/// its 5-word frame; 2 + 15 more words keep the call site 16-byte aligned.
#[unsafe(naked)]
extern "C" fn trap_common() {
    naked_asm!(
        "push rax", "push rbx", "push rcx", "push rdx", "push rsi", "push rdi", "push rbp",
        "push r8", "push r9", "push r10", "push r11", "push r12", "push r13", "push r14", "push r15",
        "mov rdi, rsp",
        "cld",
        "call {dispatch}",
        "pop r15", "pop r14", "pop r13", "pop r12", "pop r11", "pop r10", "pop r9", "pop r8",
        "pop rbp", "pop rdi", "pop rsi", "pop rdx", "pop rcx", "pop rbx", "pop rax",
        "add rsp, 16",
        "iretq",
        dispatch = sym trap_dispatch,
    )
}

struct Idt(UnsafeCell<InterruptDescriptorTable>);
// SAFETY: the IDT is written once by the boot CPU before any CPU loads it,
// and only read (by the CPUs) afterwards.
unsafe impl Sync for Idt {}
static IDT: Idt = Idt(UnsafeCell::new(InterruptDescriptorTable::new()));

/// Fills the shared IDT. Boot CPU only, once, before [`load`] anywhere.
pub fn init() {
    // SAFETY: see `Idt`: no CPU has loaded the table yet, so this is the only
    // reference to it.
    let idt = unsafe { &mut *IDT.0.get() };
    for (v, stub) in EXCEPTION_STUBS.iter().enumerate() {
        // Vectors 0-31 are exceptions; the x86_64 crate reserves some of them
        // (and panics on a few), so go through the raw slots.
        // SAFETY: as above.
        let opts = unsafe {
            raw_entry(idt, v as u8).set_handler_addr(VirtAddr::new(*stub as usize as u64))
        };
        if v == 8 {
            // SAFETY: every CPU's TSS has a valid #DF stack in this slot (gdt.rs).
            unsafe { opts.set_stack_index(gdt::DOUBLE_FAULT_IST - 1) };
        }
    }
    let pic = super::pic::PIC_VECTOR_BASE;
    for (v, stub) in [
        (IPI_VECTOR, vec_ipi as extern "C" fn()),
        (SPURIOUS_VECTOR, vec_spurious),
        (pic + 7, vec_pic_spurious_master),
        (pic + 15, vec_pic_spurious_slave),
    ] {
        // SAFETY: every stub is a valid trap entry that ends in iretq.
        unsafe { idt[v].set_handler_addr(VirtAddr::new(stub as usize as u64)) };
    }
}

/// The IDT entry for any vector, reserved ones included.
fn raw_entry(
    idt: &mut InterruptDescriptorTable,
    v: u8,
) -> &mut x86_64::structures::idt::Entry<x86_64::structures::idt::HandlerFunc> {
    // The crate's typed fields cover 0-31 with their own handler types; all
    // entries share one layout, so view the table as 256 plain entries.
    let base = idt as *mut InterruptDescriptorTable as *mut x86_64::structures::idt::Entry<_>;
    // SAFETY: InterruptDescriptorTable is repr(C) with 256 16-byte entries of
    // identical layout, and `v` < 256.
    unsafe { &mut *base.add(v as usize) }
}

/// Loads the shared IDT on this CPU.
pub fn load() {
    // SAFETY: the IDT is static and was filled by `init`.
    unsafe { (*IDT.0.get()).load_unsafe() };
}

// --- Fault probes --------------------------------------------------------

/// Per-CPU state of the probes: the fault a probe caught, and the target an
/// exec probe has called (a fault there is the probe's, not a bug).
struct ProbeState {
    caught: UnsafeCell<Option<Fault>>,
    exec_target: AtomicU64,
}
// SAFETY: each CPU reaches only its own slot (a `CpuLocal`), and the trap
// handler runs on that same CPU with interrupts off.
unsafe impl Sync for ProbeState {}
static PROBES: CpuLocal<ProbeState> = CpuLocal::new(
    [const {
        ProbeState {
            caught: UnsafeCell::new(None),
            exec_target: AtomicU64::new(0),
        }
    }; percpu::MAX_CPUS],
);

extern "C" {
    static probe_load_insn: u8;
    static probe_store_insn: u8;
    static probe_resume: u8;
}

core::arch::global_asm!(
    // fn(addr) -> u64 in rax; faults resume at probe_resume with rax untouched.
    ".pushsection .text.probe, \"ax\"",
    ".global probe_load, probe_load_insn, probe_store, probe_store_insn, probe_exec_call, probe_resume",
    "probe_load:",
    "    xor eax, eax",
    "probe_load_insn:",
    "    mov rax, [rdi]",
    "    ret",
    "probe_store:",
    "probe_store_insn:",
    "    mov [rdi], rsi",
    "    ret",
    "probe_exec_call:",
    "    call rdi",
    "    ret",
    "probe_resume:",
    "    ret",
    ".popsection",
);

extern "C" {
    fn probe_load(addr: u64) -> u64;
    fn probe_store(addr: u64, value: u64);
    fn probe_exec_call(addr: u64);
}

fn take_caught() -> Option<Fault> {
    let slot = PROBES.get();
    // SAFETY: only this CPU uses its slot; the handler that filled it has returned.
    unsafe { (*slot.caught.get()).take() }
}

/// Reads the `u64` at `addr`, or returns the fault that reading raised.
pub fn probe_read(addr: VirtAddr) -> Result<u64, Fault> {
    let _ = take_caught();
    // SAFETY: the load either succeeds (reading memory the caller chose, as a
    // plain u64 that aliases nothing Rust tracks) or faults into the fixup.
    let v = unsafe { probe_load(addr.as_u64()) };
    take_caught().map_or(Ok(v), Err)
}

/// Writes `value` at `addr`, or returns the fault that writing raised.
///
/// # Safety
/// If the write succeeds it changes memory: `addr` must not hold anything
/// Rust or the kernel relies on.
pub unsafe fn probe_write(addr: VirtAddr, value: u64) -> Result<(), Fault> {
    let _ = take_caught();
    // SAFETY: the caller vouches for the target; a fault resumes at the fixup.
    unsafe { probe_store(addr.as_u64(), value) };
    take_caught().map_or(Ok(()), Err)
}

/// Calls `addr` as a function, expecting the instruction fetch to fault.
///
/// # Safety
/// If `addr` is executable the code there runs: it must be a function that
/// returns (for instance a single `ret`).
pub unsafe fn probe_exec(addr: VirtAddr) -> Result<(), Fault> {
    let _ = take_caught();
    let slot = PROBES.get();
    slot.exec_target.store(addr.as_u64(), Ordering::Relaxed);
    // SAFETY: the caller vouches for the target; a fetch fault at it resumes
    // at the fixup with the call's return address popped.
    unsafe { probe_exec_call(addr.as_u64()) };
    slot.exec_target.store(0, Ordering::Relaxed);
    take_caught().map_or(Ok(()), Err)
}

/// If the fault happened inside a probe, records it, points the frame at the
/// probe's exit and returns true.
fn recover_probe(frame: &mut TrapFrame, fault: Fault) -> bool {
    // Only the labels' addresses are taken, never their contents.
    let (load, store, resume) = (
        &raw const probe_load_insn as u64,
        &raw const probe_store_insn as u64,
        &raw const probe_resume as u64,
    );
    // Only the faults a memory access raises belong to a probe: an NMI or a
    // debug trap that happens to stop at the probe instruction does not.
    if fault.vector != Fault::PAGE_FAULT && fault.vector != 13 {
        return false;
    }
    let slot = PROBES.get();
    let exec = slot.exec_target.load(Ordering::Relaxed);
    if frame.rip == load || frame.rip == store {
        frame.rip = resume;
    } else if exec != 0 && frame.rip == exec {
        // The fetch at the callee faulted: its return address is on top of
        // the interrupted stack. Pop it and return from probe_exec_call.
        frame.rsp += 8;
        frame.rip = resume;
        slot.exec_target.store(0, Ordering::Relaxed);
    } else {
        return false;
    }
    // SAFETY: this CPU's slot, written with interrupts off (we are in a trap).
    unsafe { *slot.caught.get() = Some(fault) };
    true
}

// --- Stack-overflow probe ---------------------------------------------------

/// What an armed stack-overflow probe caught.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackOverflow {
    /// #DF when the overflow faulted again while the CPU pushed the #PF
    /// frame (the usual case), else the #PF itself.
    pub fault: Fault,
    /// Where the handler's trap frame lay: on the #DF stack (IST1) for a
    /// double fault.
    pub handler_rsp: u64,
}

/// Per-CPU state of the stack-overflow probe: the guard range it watches,
/// the RSP to resume on, and what it caught.
struct StackProbeState {
    guard_start: AtomicU64,
    /// 0 while disarmed.
    guard_end: AtomicU64,
    saved_rsp: AtomicU64,
    caught: UnsafeCell<Option<StackOverflow>>,
}
// SAFETY: as for `ProbeState`: each CPU touches only its own slot, and its
// trap handler runs on the same CPU with interrupts off.
unsafe impl Sync for StackProbeState {}
static STACK_PROBES: CpuLocal<StackProbeState> = CpuLocal::new(
    [const {
        StackProbeState {
            guard_start: AtomicU64::new(0),
            guard_end: AtomicU64::new(0),
            saved_rsp: AtomicU64::new(0),
            caught: UnsafeCell::new(None),
        }
    }; percpu::MAX_CPUS],
);

extern "C" {
    static stack_probe_resume: u8;
    /// Saves the callee-saved registers, stores RSP at `*saved_rsp`, calls
    /// `f(arg)` on the stack whose top is `top`, and returns 0; or returns 1
    /// when the trap handler resumed it at `stack_probe_resume` on the saved
    /// RSP.
    fn stack_probe_call(
        top: u64,
        f: extern "C" fn(u64) -> u64,
        arg: u64,
        saved_rsp: *mut u64,
    ) -> u64;
}

core::arch::global_asm!(
    ".pushsection .text.stack_probe, \"ax\"",
    ".global stack_probe_call, stack_probe_resume",
    "stack_probe_call:",
    "    push rbp",
    "    push rbx",
    "    push r12",
    "    push r13",
    "    push r14",
    "    push r15",
    "    mov [rcx], rsp",
    "    mov rbx, rsp",
    // 16-byte aligned top: the callee sees the usual alignment after `call`.
    "    mov rsp, rdi",
    "    mov rdi, rdx",
    "    call rsi",
    "    mov rsp, rbx",
    "    xor eax, eax",
    "    jmp 2f",
    "stack_probe_resume:",
    "    mov eax, 1",
    "2:",
    "    pop r15",
    "    pop r14",
    "    pop r13",
    "    pop r12",
    "    pop rbx",
    "    pop rbp",
    "    ret",
    ".popsection",
);

/// Runs `f(arg)` on the stack whose top is `top`, with interrupts masked, and
/// returns the overflow if it ran into `[guard_start, guard_end)`: the trap
/// handler recognises the armed probe by CR2 and resumes here on the saved
/// RSP, so an overflow on purpose is a result, not the end of the run.
///
/// # Safety
/// `top` must be the 16-byte aligned top of mapped, writable memory that
/// nothing else uses, with `[guard_start, guard_end)` unmapped right below
/// it; `f` may hold no locks or other state that an abandoned call would
/// leave inconsistent (it is never returned from when it overflows).
pub unsafe fn probe_stack_overflow(
    top: VirtAddr,
    guard_start: VirtAddr,
    guard_end: VirtAddr,
    f: extern "C" fn(u64) -> u64,
    arg: u64,
) -> Result<(), StackOverflow> {
    let slot = STACK_PROBES.get();
    super::irq::without(|| {
        // SAFETY: our slot, interrupts masked: the handler cannot run now.
        unsafe { *slot.caught.get() = None };
        slot.guard_start
            .store(guard_start.as_u64(), Ordering::Relaxed);
        slot.guard_end.store(guard_end.as_u64(), Ordering::Relaxed);
        // Interrupts stay masked: an IPI taken near the guard would overflow
        // inside its handler, and resuming would abandon it unacknowledged.
        // SAFETY: the caller vouches for the stack and for `f`; the asm
        // preserves the callee-saved registers on both of its exits.
        let resumed = unsafe { stack_probe_call(top.as_u64(), f, arg, slot.saved_rsp.as_ptr()) };
        slot.guard_end.store(0, Ordering::Relaxed);
        // SAFETY: as above; the handler that wrote it has returned.
        let caught = unsafe { (*slot.caught.get()).take() };
        match (resumed, caught) {
            (0, _) => Ok(()),
            (_, Some(c)) => Err(c),
            // Cannot happen: only the handler resumes there, after recording.
            (_, None) => Ok(()),
        }
    })
}

/// If this CPU's stack probe is armed and the fault hit its guard, records
/// the overflow and resumes the probe. Works for #DF (on IST1) and #PF.
fn recover_stack_probe(frame: &mut TrapFrame, fault: Fault) -> bool {
    let slot = STACK_PROBES.get();
    let end = slot.guard_end.load(Ordering::Relaxed);
    let cr2 = Cr2::read_raw();
    let hit = end != 0
        && (slot.guard_start.load(Ordering::Relaxed)..end).contains(&cr2)
        && (fault.vector == 8 || fault.vector == Fault::PAGE_FAULT);
    if !hit {
        return false;
    }
    slot.guard_end.store(0, Ordering::Relaxed);
    let caught = StackOverflow {
        fault: Fault { addr: cr2, ..fault },
        handler_rsp: frame as *const TrapFrame as u64,
    };
    // SAFETY: this CPU's slot, written in its own trap handler.
    unsafe { *slot.caught.get() = Some(caught) };
    frame.rip = &raw const stack_probe_resume as u64;
    frame.rsp = slot.saved_rsp.load(Ordering::Relaxed);
    true
}

// --- Dispatch --------------------------------------------------------------

/// Set while a CPU is reporting a fatal trap, so a fault inside the report
/// does not recurse.
static REPORTING: CpuLocal<AtomicBool> =
    CpuLocal::new([const { AtomicBool::new(false) }; percpu::MAX_CPUS]);

/// IPIs each CPU has taken (the self-IPI benchmark waits on its own).
static IPIS_TAKEN: CpuLocal<AtomicU64> =
    CpuLocal::new([const { AtomicU64::new(0) }; percpu::MAX_CPUS]);

/// IPIs this CPU has taken.
pub fn ipis_taken() -> u64 {
    IPIS_TAKEN.get().load(Ordering::Relaxed)
}

/// The mm installs this to resolve #PFs on addresses with a mapping pending
/// in this CPU's queue: it returns true when the access should be retried.
pub type PageFaultHook = fn(addr: VirtAddr, error_code: u64) -> bool;
static PF_HOOK: AtomicU64 = AtomicU64::new(0);

pub fn set_page_fault_hook(hook: PageFaultHook) {
    PF_HOOK.store(hook as usize as u64, Ordering::Release);
}

extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    let vector = frame.vector as u8;
    match vector {
        IPI_VECTOR => {
            IPIS_TAKEN.get().fetch_add(1, Ordering::Relaxed);
            super::smp::serve_mailbox();
            apic::eoi();
        }
        // Spurious: the APIC's or the master 8259's IRQ7 take no EOI; the
        // slave's IRQ15 was real to the master, which needs its EOI.
        SPURIOUS_VECTOR => {}
        v if v == super::pic::PIC_VECTOR_BASE + 7 => {}
        v if v == super::pic::PIC_VECTOR_BASE + 15 => super::pic::eoi_master(),
        _ => {
            let addr = if vector == Fault::PAGE_FAULT {
                Cr2::read_raw()
            } else {
                0
            };
            let fault = Fault {
                vector,
                error_code: frame.error_code,
                addr,
            };
            if recover_stack_probe(frame, fault) {
                return;
            }
            if vector == Fault::PAGE_FAULT {
                let hook = PF_HOOK.load(Ordering::Acquire);
                if hook != 0 {
                    // SAFETY: PF_HOOK only ever holds a PageFaultHook.
                    let hook: PageFaultHook = unsafe { core::mem::transmute(hook as usize) };
                    if hook(VirtAddr::new_truncate(addr), frame.error_code) {
                        return;
                    }
                }
            }
            if recover_probe(frame, fault) {
                return;
            }
            fatal(frame, fault);
        }
    }
}

fn fatal(frame: &TrapFrame, fault: Fault) -> ! {
    let cpu = percpu::cpu_index();
    if REPORTING.get().swap(true, Ordering::SeqCst) {
        // Faulted while reporting: the report is lost, the exit must not be.
        power::exit_now(power::EXIT_FAILURE);
    }
    // The console lock may be held by the interrupted code: write unlocked.
    let mut w = serial::Raw;
    let _ = writeln!(w, "\n!!! cpu{cpu}: unexpected {fault}");
    if fault.vector == 8 {
        if let Some(owner) = super::stacks::guard_owner(VirtAddr::new_truncate(Cr2::read_raw())) {
            let _ = writeln!(
                w,
                "!!! stack overflow: cpu{owner}'s stack ran into its guard page"
            );
        }
    }
    let _ = writeln!(
        w,
        "    rip {:#018x} cs {:#x} rflags {:#x} rsp {:#018x} ss {:#x}",
        frame.rip, frame.cs, frame.rflags, frame.rsp, frame.ss
    );
    let _ = writeln!(
        w,
        "    rax {:#018x} rbx {:#018x} rcx {:#018x} rdx {:#018x}",
        frame.rax, frame.rbx, frame.rcx, frame.rdx
    );
    let _ = writeln!(
        w,
        "    rsi {:#018x} rdi {:#018x} rbp {:#018x} r8  {:#018x}",
        frame.rsi, frame.rdi, frame.rbp, frame.r8
    );
    let _ = writeln!(
        w,
        "    r9  {:#018x} r10 {:#018x} r11 {:#018x} r12 {:#018x}",
        frame.r9, frame.r10, frame.r11, frame.r12
    );
    let _ = writeln!(
        w,
        "    r13 {:#018x} r14 {:#018x} r15 {:#018x} cr2 {:#018x}",
        frame.r13,
        frame.r14,
        frame.r15,
        Cr2::read_raw()
    );
    let _ = hyperbatch::hb::emit(&mut w, "fault", |r| {
        r.u64("cpu", cpu as u64)?
            .u64("vector", fault.vector as u64)?
            .str("name", vector_name(fault.vector))?
            .u64("error_code", fault.error_code)?
            .hex("rip", frame.rip)?
            .hex("cr2", fault.addr)?;
        Ok(())
    });
    power::exit(power::EXIT_FAILURE);
}

pub fn vector_name(v: u8) -> &'static str {
    match v {
        0 => "#DE divide error",
        1 => "#DB debug",
        2 => "NMI",
        3 => "#BP breakpoint",
        4 => "#OF overflow",
        5 => "#BR bound range",
        6 => "#UD invalid opcode",
        7 => "#NM device not available",
        8 => "#DF double fault",
        10 => "#TS invalid TSS",
        11 => "#NP segment not present",
        12 => "#SS stack fault",
        13 => "#GP general protection",
        14 => "#PF page fault",
        16 => "#MF x87 error",
        17 => "#AC alignment check",
        18 => "#MC machine check",
        19 => "#XM SIMD error",
        20 => "#VE virtualization exception",
        21 => "#CP control protection",
        29 => "#VC VMM communication",
        30 => "#SX security exception",
        _ => "reserved exception",
    }
}

/// The #PF error code in words (Intel SDM vol. 3, 4.7).
pub fn pf_reason(code: u64) -> &'static str {
    match (code & 1 != 0, code & 2 != 0, code & 16 != 0) {
        (_, _, true) if code & 1 != 0 => "instruction fetch, protection violation",
        (_, _, true) => "instruction fetch, not present",
        (false, false, _) => "read, not present",
        (false, true, _) => "write, not present",
        (true, false, _) => "read, protection violation",
        (true, true, _) => "write, protection violation",
    }
}

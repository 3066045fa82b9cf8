//! Starting the application processors, and asking other CPUs to do things.
//!
//! Start-up follows the MP protocol (Intel SDM vol. 3, 9.4.4): INIT, 10 ms,
//! STARTUP, 200 us, a second STARTUP if the CPU has not shown up. The CPU
//! runs trampoline.s below 1 MiB into long mode, then `ap_entry`. CPUs are
//! started one at a time through a single hand-off block; a CPU that does not
//! report online within the timeout is named and skipped, and the rest go on.
//!
//! Cross-CPU requests use one fixed vector. A sender posts a request in its
//! own per-CPU `Request` slot, sets its bit in each target's `pending` mask,
//! sends the IPIs and waits for as many acknowledgements as targets. While it
//! waits it keeps serving requests posted to it, so two CPUs that ask each
//! other at the same moment cannot deadlock.

use super::percpu::CpuSlots;
use super::{apic, interrupts, percpu, stacks, tsc};
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use hyperbatch::acpi_tables::Cpu;

/// Where the trampoline is copied: page-aligned, below 1 MiB, above the
/// real-mode IVT and BDA, below the EBDA. The frame allocator never hands
/// out memory below 1 MiB.
const TRAMPOLINE_BASE: u64 = 0x8000;
const INIT_DELAY_US: u64 = 10_000;
const STARTUP_DELAY_US: u64 = 200;
/// How long a CPU may take from STARTUP to online. Generous: under KVM that
/// interprets ring 0 (as on nested hosts without hardware virtualization) a
/// CPU runs ~1,400 cycles per instruction.
const ONLINE_TIMEOUT_US: u64 = 2_000_000;
/// How long a cross-CPU request may wait for its acknowledgements before the
/// watchdog names the CPUs that did not answer.
const ACK_TIMEOUT_US: u64 = 2_000_000;

core::arch::global_asm!(include_str!("trampoline.s"), base = const TRAMPOLINE_BASE);

extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
}

/// What the boot CPU hands the CPU it is starting. Read by `ap_long_mode`
/// in boot.s, which gets each field's offset as a `const` operand
/// (arch/x86_64/mod.rs), so the layout lives here only.
#[repr(C)]
pub struct ApHandoff {
    /// The kernel page-table root.
    pub cr3: AtomicU64,
    /// The top of the starting CPU's guarded stack.
    pub stack: AtomicU64,
    /// Its CPU index, `ap_entry`'s argument.
    pub index: AtomicU64,
    /// 0 until a CPU takes this hand-off (boot.s swaps in 1 before it
    /// touches the stack), or the boot CPU gives up on it: whichever swaps
    /// first owns it, so a latecomer cannot run on the next CPU's stack.
    pub claimed: AtomicU64,
}

pub static AP_HANDOFF: ApHandoff = ApHandoff {
    cr3: AtomicU64::new(0),
    stack: AtomicU64::new(0),
    index: AtomicU64::new(0),
    claimed: AtomicU64::new(0),
};

/// CPUs that came online, the boot CPU included.
static ONLINE: AtomicUsize = AtomicUsize::new(1);
/// Set by a CPU that arrived with an APIC ID other than the one expected.
static STRAY: AtomicBool = AtomicBool::new(false);
static WANT_X2APIC: AtomicBool = AtomicBool::new(false);

pub fn online_count() -> usize {
    ONLINE.load(Ordering::Acquire)
}

pub struct StartReport {
    pub listed: usize,
    pub online: usize,
    /// APIC IDs of CPUs that were listed but did not come up.
    pub failed: heapless::Vec<u32, { percpu::MAX_CPUS }>,
    /// A CPU kept the hand-off busy, so the CPUs after it were not started.
    pub abandoned: bool,
}

/// Starts every startable CPU in `cpus` other than the boot CPU.
/// `skip_apic_id` leaves one CPU unstarted on purpose (fault injection).
pub fn start_aps(cpus: &[Cpu], want_x2apic: bool, skip_apic_id: Option<u32>) -> StartReport {
    WANT_X2APIC.store(want_x2apic, Ordering::Relaxed);
    let bsp = apic::id();
    // SAFETY: the trampoline bytes are in our rodata; the destination is
    // below 1 MiB, identity-mapped writable, and never handed out by the
    // frame allocator; nothing else lives there.
    unsafe {
        let start = &raw const ap_trampoline_start;
        let len = (&raw const ap_trampoline_end).offset_from(start) as usize;
        core::ptr::copy_nonoverlapping(start, TRAMPOLINE_BASE as *mut u8, len);
    }
    let mut report = StartReport {
        listed: 0,
        online: 1,
        failed: heapless::Vec::new(),
        abandoned: false,
    };
    let mut next_index = 1;
    for cpu in cpus.iter().filter(|c| c.startable()) {
        report.listed += 1;
        if cpu.apic_id == bsp {
            continue;
        }
        if report.abandoned {
            let _ = report.failed.push(cpu.apic_id);
            continue;
        }
        if cpu.apic_id > 0xfe && apic::mode() == apic::Mode::XApic {
            log::error!(
                "cpu with APIC ID {} needs x2APIC, which this CPU lacks; not starting it",
                cpu.apic_id
            );
            let _ = report.failed.push(cpu.apic_id);
            continue;
        }
        let index = next_index;
        next_index += 1;
        match start_one(index, cpu.apic_id, skip_apic_id == Some(cpu.apic_id)) {
            Ok(()) => report.online += 1,
            Err(why @ StartError::ClaimedButSilent) => {
                log::error!(
                    "cpu{index} (APIC ID {}) did not come up: {why}; starting no more CPUs",
                    cpu.apic_id
                );
                let _ = report.failed.push(cpu.apic_id);
                report.abandoned = true;
            }
            Err(why) => {
                log::error!(
                    "cpu{index} (APIC ID {}) did not come up: {why}; continuing without it",
                    cpu.apic_id
                );
                let _ = report.failed.push(cpu.apic_id);
            }
        }
    }
    if report.listed == 0 {
        report.listed = 1; // no MADT: just us
    }
    report
}

fn start_one(index: usize, apic_id: u32, skip: bool) -> Result<(), StartError> {
    let stacks = stacks::map_for(index).map_err(|_| StartError::NoStacks)?;
    let slot = percpu::get(index);
    slot.apic_id.store(apic_id, Ordering::Relaxed);
    AP_HANDOFF.cr3.store(
        crate::memory::root().start_address().as_u64(),
        Ordering::Relaxed,
    );
    AP_HANDOFF
        .stack
        .store(stacks.kernel_top.as_u64(), Ordering::Relaxed);
    AP_HANDOFF.index.store(index as u64, Ordering::Relaxed);
    AP_HANDOFF.claimed.store(0, Ordering::Release);
    if skip {
        // Fault injection: behave exactly as if the CPU never answered.
        tsc::delay_us(INIT_DELAY_US);
        return Err(StartError::Skipped);
    }
    apic::send_init(apic_id);
    tsc::delay_us(INIT_DELAY_US);
    for _ in 0..2 {
        apic::send_startup(apic_id, (TRAMPOLINE_BASE >> 12) as u8);
        tsc::delay_us(STARTUP_DELAY_US);
        if AP_HANDOFF.claimed.load(Ordering::Acquire) != 0 {
            break;
        }
    }
    if wait_online(slot)? {
        return Ok(());
    }
    // Nobody may use this hand-off any more. Swapped, not stored: a CPU that
    // claimed it a moment ago is running on it, and must not be reported
    // failed (it would come online anyway) nor have its hand-off rewritten
    // for the next CPU while it may still be reading it.
    if AP_HANDOFF.claimed.swap(1, Ordering::AcqRel) == 0 {
        return Err(StartError::Silent);
    }
    if wait_online(slot)? {
        return Ok(());
    }
    Err(StartError::ClaimedButSilent)
}

/// Waits up to the online timeout for `slot` to come online: true if it
/// did, false if the time ran out.
fn wait_online(slot: &percpu::PerCpu) -> Result<bool, StartError> {
    let deadline = tsc::rdtsc() + tsc::hz() / 1_000_000 * ONLINE_TIMEOUT_US;
    while tsc::rdtsc() < deadline {
        if slot.online.load(Ordering::Acquire) {
            return Ok(true);
        }
        if STRAY.swap(false, Ordering::AcqRel) {
            return Err(StartError::Stray);
        }
        core::hint::spin_loop();
    }
    Ok(false)
}

/// Why a CPU did not come up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StartError {
    NoStacks,
    Skipped,
    /// Another CPU arrived in its place.
    Stray,
    /// It never claimed the hand-off.
    Silent,
    /// It claimed the hand-off, then did not come online: it may still be
    /// reading the hand-off, which therefore cannot serve another CPU.
    ClaimedButSilent,
}

impl core::fmt::Display for StartError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            StartError::NoStacks => "no memory for its stacks",
            StartError::Skipped => "skipped on purpose (skip_cpu on the command line)",
            StartError::Stray => "another CPU took its start-up slot",
            StartError::Silent => "timed out",
            StartError::ClaimedButSilent => {
                "it took its start-up slot, then did not come online in twice the timeout"
            }
        })
    }
}

/// The Rust entry of an application processor, on its own stack.
pub extern "C" fn ap_entry(index: u64) -> ! {
    let index = index as usize;
    // boot.s claimed the hand-off before touching its stack; a CPU that
    // found it taken parked there.
    let expected = percpu::get(index).apic_id.load(Ordering::Relaxed);
    // SAFETY: the boot CPU reserved `index` for the CPU with APIC ID
    // `expected`; we check below that we are that CPU before going on.
    unsafe { percpu::init_this_cpu(index, expected) };
    super::gdt::init_this_cpu(stacks::tops(index).df_top);
    interrupts::load();
    super::enable_cpu_features();
    apic::init_this_cpu(false, WANT_X2APIC.load(Ordering::Relaxed));
    if apic::id() != expected {
        STRAY.store(true, Ordering::Release);
        park();
    }
    ONLINE.fetch_add(1, Ordering::AcqRel);
    percpu::this().online.store(true, Ordering::Release);
    ONLINE_MASK.fetch_or(1 << index, Ordering::AcqRel);
    idle_loop()
}

fn park() -> ! {
    x86_64::instructions::interrupts::disable();
    loop {
        x86_64::instructions::hlt();
    }
}

/// What an application processor does when it has nothing to do: sleep until
/// an IPI, serve it, and run any work the boot CPU handed it.
///
/// An idle CPU is in lazy TLB mode (Linux's term): it first drops every
/// non-global translation (a CR3 reload), then marks itself lazy, and TLB
/// shootdowns skip it, since it holds nothing to shoot down and touches no
/// mm memory while idle. It clears the mark before running work.
fn idle_loop() -> ! {
    let me = percpu::cpu_index();
    loop {
        // Check for work with interrupts masked, then sleep with `sti; hlt`:
        // STI's one-instruction shadow makes the pair atomic, so a post_work
        // IPI that lands after the check wakes the hlt instead of being lost.
        x86_64::instructions::interrupts::disable();
        if WORK.mine().func.load(Ordering::Acquire) != 0 {
            leave_lazy_tlb(me);
            x86_64::instructions::interrupts::enable();
            run_posted_work();
            continue;
        }
        enter_lazy_tlb(me);
        x86_64::instructions::interrupts::enable_and_hlt();
    }
}

/// Bit n: CPU n is idle and holds no mm translations.
static LAZY_TLB: AtomicU64 = AtomicU64::new(0);

fn enter_lazy_tlb(me: usize) {
    if LAZY_TLB.load(Ordering::Relaxed) & (1 << me) != 0 {
        return;
    }
    crate::mm::lazy_tlb_reload();
    LAZY_TLB.fetch_or(1 << me, Ordering::SeqCst);
}

fn leave_lazy_tlb(me: usize) {
    if LAZY_TLB.load(Ordering::Relaxed) & (1 << me) == 0 {
        return;
    }
    // A locked RMW is a full fence: the clear is visible before this CPU's
    // first access to mm memory, pairing with the fence in tlb_targets.
    LAZY_TLB.fetch_and(!(1 << me), Ordering::SeqCst);
    // While lazy, the CPU may still have filled TLB entries speculatively
    // from the live tables (Intel SDM vol. 3, 4.10.2.3), and shootdowns
    // skipped it. Drop them: after the clear above, every later change
    // reaches this CPU, and everything earlier is in the tables now.
    crate::mm::lazy_tlb_reload();
}

/// The CPUs a TLB shootdown must reach: online, not idle in lazy TLB mode,
/// not this one. Called after the flush's PTE writes; the fence orders those
/// writes before the read of the lazy mask (a CPU that left lazy mode after
/// it either is in the mask or fills its TLB from the new entries).
#[inline]
pub fn tlb_targets() -> u64 {
    core::sync::atomic::fence(Ordering::SeqCst);
    online_mask() & !LAZY_TLB.load(Ordering::SeqCst) & !(1 << percpu::cpu_index())
}

// --- Work for other CPUs (run in thread context, interrupts on) -----------

struct Work {
    func: AtomicU64,
    arg: AtomicU64,
    done: AtomicBool,
}

/// Each CPU's posted work: others post, the owner runs it.
static WORK: CpuSlots<Work> = CpuSlots::new(
    [const {
        Work {
            func: AtomicU64::new(0),
            arg: AtomicU64::new(0),
            done: AtomicBool::new(true),
        }
    }; percpu::MAX_CPUS],
);

fn run_posted_work() {
    let w = WORK.mine();
    let f = w.func.swap(0, Ordering::AcqRel);
    if f != 0 {
        // SAFETY: `post_work` only stores `fn(u64)` pointers.
        let f: fn(u64) = unsafe { core::mem::transmute(f as usize) };
        crate::mm::work_starts();
        f(w.arg.load(Ordering::Acquire));
        // Nothing stays queued on a vCPU that is not running work: flushed
        // before `done`, so whoever waits for the work sees its frees too.
        crate::mm::idle();
        w.done.store(true, Ordering::Release);
        // The work may have touched mm memory: back to lazy TLB only through
        // idle_loop's flush.
    }
}

/// Has CPU `cpu` run `f(arg)` from its idle loop. Returns false if it is
/// still busy with earlier work.
pub fn post_work(cpu: usize, f: fn(u64), arg: u64) -> bool {
    let w = WORK.of(cpu);
    if w.done
        .compare_exchange(true, false, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return false;
    }
    w.arg.store(arg, Ordering::Release);
    w.func.store(f as usize as u64, Ordering::Release);
    apic::send_ipi(
        percpu::get(cpu).apic_id.load(Ordering::Relaxed),
        interrupts::IPI_VECTOR,
    );
    true
}

pub fn work_done(cpu: usize) -> bool {
    WORK.of(cpu).done.load(Ordering::Acquire)
}

// --- Requests with acknowledgement (run in the IPI handler) ----------------

/// A request a CPU posts for others to serve in their IPI handler.
pub struct Request {
    handler: AtomicU64,
    arg: AtomicU64,
    acks: AtomicU32,
}

/// Each CPU's request slot: the owner posts, its targets read and ack.
static REQUESTS: CpuSlots<Request> = CpuSlots::new(
    [const {
        Request {
            handler: AtomicU64::new(0),
            arg: AtomicU64::new(0),
            acks: AtomicU32::new(0),
        }
    }; percpu::MAX_CPUS],
);
/// Bit s of PENDING[t]: CPU s has a request for CPU t.
static PENDING: CpuSlots<AtomicU64> =
    CpuSlots::new([const { AtomicU64::new(0) }; percpu::MAX_CPUS]);

/// Serves every request posted to this CPU. Runs in the IPI handler, and
/// from `call` while waiting, with interrupts masked.
pub fn serve_mailbox() {
    // Callers in thread context spin with interrupts on: a nested IPI
    // would re-enter the handlers (and PUBLISHED's lock) otherwise.
    super::irq::without(serve_mailbox_masked);
}

fn serve_mailbox_masked() {
    let mut senders = PENDING.mine().swap(0, Ordering::AcqRel);
    while senders != 0 {
        let s = senders.trailing_zeros() as usize;
        senders &= senders - 1;
        let req = REQUESTS.of(s);
        let h = req.handler.load(Ordering::Acquire);
        if h != 0 {
            // SAFETY: `call` only stores `fn(u64)` pointers.
            let h: fn(u64) = unsafe { core::mem::transmute(h as usize) };
            h(req.arg.load(Ordering::Acquire));
        }
        percpu::this()
            .mailbox
            .served
            .fetch_add(1, Ordering::Relaxed);
        req.acks.fetch_add(1, Ordering::AcqRel);
    }
}

/// Why a request failed: the CPUs that did not acknowledge in time.
#[derive(Debug)]
pub struct NoAck {
    pub missing: u64,
}

/// Runs `handler(arg)` on every online CPU in `targets` (a bitmask of CPU
/// indices; this CPU is left out) from their IPI handlers, and waits until
/// each has done so. Returns the number of IPIs sent.
///
/// A target that does not acknowledge within the timeout ends the run
/// through the watchdog, naming it (`what` says what was asked). Going on
/// would be unsound: its late acknowledgement would count towards the next
/// request, whose sender could then free what a target still reads.
pub fn call(what: &str, targets: u64, handler: fn(u64), arg: u64) -> u32 {
    let me = percpu::cpu_index();
    let targets = targets & !(1 << me) & online_mask();
    if targets == 0 {
        return 0;
    }
    super::irq::without(|| {
        let req = REQUESTS.mine();
        req.acks.store(0, Ordering::Relaxed);
        req.arg.store(arg, Ordering::Relaxed);
        req.handler
            .store(handler as usize as u64, Ordering::Release);
        let mut sent = 0;
        let mut t = targets;
        while t != 0 {
            let cpu = t.trailing_zeros() as usize;
            t &= t - 1;
            PENDING.of(cpu).fetch_or(1 << me, Ordering::AcqRel);
            percpu::get(cpu)
                .mailbox
                .requested
                .fetch_add(1, Ordering::Relaxed);
            apic::send_ipi(
                percpu::get(cpu).apic_id.load(Ordering::Relaxed),
                interrupts::IPI_VECTOR,
            );
            sent += 1;
        }
        let deadline = tsc::rdtsc() + tsc::hz() / 1_000_000 * ACK_TIMEOUT_US;
        while req.acks.load(Ordering::Acquire) < sent {
            // Serve others while waiting: they may be waiting for us.
            serve_mailbox();
            if tsc::rdtsc() > deadline {
                let missing = targets & !acked_mask(me, targets);
                watchdog_fail(what, NoAck { missing });
            }
            core::hint::spin_loop();
        }
        req.handler.store(0, Ordering::Release);
        sent
    })
}

/// True while this CPU is inside [`call`], waiting for acknowledgements: a
/// handler must not start a call of its own then (the request slot is in
/// use).
pub fn in_call() -> bool {
    REQUESTS.mine().handler.load(Ordering::Acquire) != 0
}

/// Which of `targets` no longer have our request pending (best effort, for
/// the watchdog's report).
fn acked_mask(me: usize, targets: u64) -> u64 {
    let mut acked = 0;
    let mut t = targets;
    while t != 0 {
        let cpu = t.trailing_zeros() as usize;
        t &= t - 1;
        if PENDING.of(cpu).load(Ordering::Acquire) & (1 << me) == 0 {
            acked |= 1 << cpu;
        }
    }
    acked
}

/// Bit n: CPU n is online (the boot CPU always is). One load, so a flush
/// finds its shootdown targets in O(1), not by walking every slot.
static ONLINE_MASK: AtomicU64 = AtomicU64::new(1);

/// Bitmask of online CPU indices.
pub fn online_mask() -> u64 {
    ONLINE_MASK.load(Ordering::Acquire)
}

fn ping(_: u64) {}

/// One acknowledged request to every other online CPU: proves the IPI path.
pub fn ping_all() -> u32 {
    call("IPI ping", u64::MAX, ping, 0)
}

/// Prints which CPUs failed to acknowledge, and stops the run.
pub fn watchdog_fail(what: &str, e: NoAck) -> ! {
    let mut w = super::serial::Raw;
    let _ = writeln!(
        w,
        "!!! watchdog: {what}: no acknowledgement within {} ms from cpus {:#x}",
        ACK_TIMEOUT_US / 1000,
        e.missing
    );
    super::power::exit(super::power::EXIT_FAILURE)
}

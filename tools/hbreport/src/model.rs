//! The cost model: what a figure costs on a platform, from what the guest
//! counted.
//!
//! cycles/op ≈ guest instructions/op × CPI + Σ events/op × cost(event, platform)
//!
//! The instructions come from the counting boot (exact), the events from
//! the queue's counters, and the costs from one of two places:
//! - **this run** ([`Fit`]): the `exits` suite's timed figures, each less
//!   its own instructions at a CPI fitted on the exits suite and the
//!   floor. [`check`] then predicts every timed figure and compares it
//!   with its measurement, so the model is checked where it can be;
//! - **reference platforms** ([`Platform`]): published costs (sources.rs),
//!   as ranges where sources disagree, and as lower bounds where only a
//!   bound is known. [`project`] applies them to every suite.
//!
//! The events follow how hosts trap page-table work. Under shadow paging
//! KVM lets a leaf table go out of sync (Documentation/virt/kvm/x86/mmu.rst):
//! the first write to it in a sync epoch faults and unsyncs it (the
//! guest's `tables_unsynced`), later writes are plain stores, an `invlpg`
//! exits and syncs its entry, and a CR3 load syncs every unsync table. So
//! there batching saves the invalidation exits, not the stores. Under
//! EPT/NPT nothing of the page-table work exits; what remains is native
//! `invlpg` and CR3 costs, the TLB refill after a full flush, the IPIs of
//! a shootdown, and the software.

use crate::log::{Counters, Figure, Query};
use crate::report::{ratio, thousands};
use crate::sources;
use crate::summary::{Agg, FigKind, Summary};
use std::fmt::Write;

// --- events -------------------------------------------------------------------

/// What the model prices, each counted by the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The first store to a leaf table in a sync epoch (`tables_unsynced`):
    /// under shadow paging it faults on the write protection.
    InSyncStore,
    /// Every other PTE store (`pte_writes` − `tables_unsynced`).
    UnsyncStore,
    /// A local `invlpg`.
    Invlpg,
    /// A local full flush: a CR3 load (`full_flushes` + `lazy_tlb_reloads`).
    FullFlush,
    /// An unsync leaf table a CR3 load syncs again (`tables_unsynced`:
    /// every table the epoch unsynced is synced at its end).
    Resync,
    /// Refilling the working set after a full flush, local or remote.
    Refill,
    /// A CR0/CR4 write that reached the register (`cr_writes`).
    CrWrite,
    /// An IPI to one target (`ipis`), sent and delivered.
    Ipi,
    /// A shootdown round (`shootdowns`): where PV_SEND_IPI folds the
    /// round's IPIs into one hypercall, that hypercall.
    Round,
    /// An `invlpg` a target ran for another vCPU's shootdown.
    RemoteInvlpg,
    /// A full flush a target ran for another vCPU's shootdown.
    RemoteFullFlush,
    /// The first access to a freshly made translation (`touches`): a TLB
    /// fill, and under shadow paging a fault that builds the shadow entry.
    Touch,
}

impl Event {
    pub const ALL: [Event; 12] = [
        Event::InSyncStore,
        Event::UnsyncStore,
        Event::Invlpg,
        Event::FullFlush,
        Event::Resync,
        Event::Refill,
        Event::CrWrite,
        Event::Ipi,
        Event::Round,
        Event::RemoteInvlpg,
        Event::RemoteFullFlush,
        Event::Touch,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Event::InSyncStore => "in_sync_store",
            Event::UnsyncStore => "unsync_store",
            Event::Invlpg => "invlpg",
            Event::FullFlush => "full_flush",
            Event::Resync => "resync",
            Event::Refill => "refill",
            Event::CrWrite => "cr_write",
            Event::Ipi => "ipi",
            Event::Round => "round",
            Event::RemoteInvlpg => "remote_invlpg",
            Event::RemoteFullFlush => "remote_full_flush",
            Event::Touch => "touch",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Event::InSyncStore => "PTE store to an in-sync leaf table (first in its epoch)",
            Event::UnsyncStore => "PTE store to an out-of-sync leaf table",
            Event::Invlpg => "`invlpg`",
            Event::FullFlush => "full flush (CR3 load)",
            Event::Resync => "unsync table resynced by a CR3 load",
            Event::Refill => "TLB refill after a full flush",
            Event::CrWrite => "CR0/CR4 write",
            Event::Ipi => "IPI, per target",
            Event::Round => "shootdown round (PV_SEND_IPI: its hypercall)",
            Event::RemoteInvlpg => "remote `invlpg` (a target's handler)",
            Event::RemoteFullFlush => "remote full flush (a target's handler)",
            Event::Touch => "first access to a fresh translation (TLB fill)",
        }
    }
}

/// Events per operation of one figure.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Events {
    pub per_op: [f64; 12],
}

impl Events {
    pub fn of_counters(c: &Counters, ops: u64) -> Events {
        let n = ops.max(1) as f64;
        let mut e = Events::default();
        let unsynced = c.tables_unsynced.min(c.pte_writes);
        for ev in Event::ALL {
            let v = match ev {
                Event::InSyncStore | Event::Resync => unsynced,
                Event::UnsyncStore => c.pte_writes - unsynced,
                Event::Invlpg => c.invlpg,
                Event::FullFlush => c.full_flushes.saturating_add(c.lazy_tlb_reloads),
                Event::Refill => c
                    .full_flushes
                    .saturating_add(c.lazy_tlb_reloads)
                    .saturating_add(c.remote_full_flushes),
                Event::CrWrite => c.cr_writes,
                Event::Ipi => c.ipis,
                Event::Round => c.shootdowns,
                Event::RemoteInvlpg => c.remote_invlpg,
                Event::RemoteFullFlush => c.remote_full_flushes,
                Event::Touch => c.touches,
            };
            e.per_op[ev as usize] = v as f64 / n;
        }
        e
    }

    pub fn of(f: &Figure) -> Option<Events> {
        f.counters
            .as_ref()
            .map(|c| Events::of_counters(c, f.measured_ops()))
    }

    pub fn get(&self, e: Event) -> f64 {
        self.per_op[e as usize]
    }
}

// --- costs --------------------------------------------------------------------

/// A cost in cycles: a range where sources disagree, and a lower bound
/// where no source gives more than a bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    pub lo: f64,
    pub hi: f64,
    /// The real cost is at least this: no published figure covers the
    /// whole of it.
    pub at_least: bool,
}

impl Cost {
    pub const ZERO: Cost = Cost::exactly(0.0);

    pub const fn exactly(c: f64) -> Cost {
        Cost {
            lo: c,
            hi: c,
            at_least: false,
        }
    }

    pub const fn range(lo: f64, hi: f64) -> Cost {
        Cost {
            lo,
            hi,
            at_least: false,
        }
    }

    pub const fn at_least(c: f64) -> Cost {
        Cost {
            lo: c,
            hi: c,
            at_least: true,
        }
    }

    fn scale(self, k: f64) -> Cost {
        Cost {
            lo: self.lo * k,
            hi: self.hi * k,
            at_least: self.at_least,
        }
    }

    fn plus(self, o: Cost) -> Cost {
        Cost {
            lo: self.lo + o.lo,
            hi: self.hi + o.hi,
            at_least: self.at_least || o.at_least,
        }
    }

    pub fn text(self) -> String {
        let mark = if self.at_least { "≥ " } else { "" };
        if (self.hi - self.lo).abs() < 0.5 {
            format!("{mark}{}", thousands(self.lo))
        } else {
            format!("{mark}{}–{}", thousands(self.lo), thousands(self.hi))
        }
    }
}

/// A reference platform: a projection's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    KvmEpt,
    KvmEptIpiv,
    KvmEptPvIpi,
    KvmShadow,
    NestedEpt,
    NestedShadow,
    Invlpgb,
}

impl Platform {
    pub const ALL: [Platform; 7] = [
        Platform::KvmEpt,
        Platform::KvmEptIpiv,
        Platform::KvmEptPvIpi,
        Platform::KvmShadow,
        Platform::NestedEpt,
        Platform::NestedShadow,
        Platform::Invlpgb,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Platform::KvmEpt => "kvm_ept",
            Platform::KvmEptIpiv => "kvm_ept_ipiv",
            Platform::KvmEptPvIpi => "kvm_ept_pv_send_ipi",
            Platform::KvmShadow => "kvm_shadow",
            Platform::NestedEpt => "nested_ept",
            Platform::NestedShadow => "nested_shadow",
            Platform::Invlpgb => "invlpgb",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Platform::KvmEpt => "KVM, EPT/NPT, IPIs exit",
            Platform::KvmEptIpiv => "KVM, EPT/NPT, IPI virtualization (IPIv/x2AVIC)",
            Platform::KvmEptPvIpi => "KVM, EPT/NPT, PV_SEND_IPI",
            Platform::KvmShadow => "KVM, shadow paging (ept=0/npt=0)",
            Platform::NestedEpt => "nested: L2 on L1 with nested EPT",
            Platform::NestedShadow => "nested: L1 shadow-pages L2",
            Platform::Invlpgb => "KVM, EPT/NPT, broadcast invalidation (INVLPGB; projection only)",
        }
    }
}

/// One reference cost: an event on a platform, with why and where from.
#[derive(Debug, Clone, Copy)]
pub struct RefCost {
    pub platform: Platform,
    pub event: Event,
    pub cost: Cost,
    pub why: &'static str,
    /// Keys into [`sources::SOURCES`].
    pub sources: &'static [&'static str],
}

// Published figures the table below is built from, in cycles.

/// A bare CPUID exit, KVM, one pinned vCPU (mitigations off .. on).
const EXIT: Cost = Cost::range(1018.0, 1600.0);
/// An IPI round trip to another vCPU, fastpath .. without.
const IPI: Cost = Cost::range(3293.0, 4238.0);
/// The same with IPI virtualization: 22.21% .. 15.98% fewer cycles.
const IPI_IPIV: Cost = Cost::range(3293.0 * (1.0 - 0.2221), 4238.0 * (1.0 - 0.1598));
/// PV_SEND_IPI: the sender's exit (one per round) leaves the per-target
/// part of the round trip.
const IPI_PV_TARGET: Cost = Cost::range(3293.0 - 1018.0, 4238.0 - 1600.0);
const NATIVE_INVLPG: Cost = Cost::exactly(260.0);
const NATIVE_CR3: Cost = Cost::exactly(96.0);
/// Refilling the TLB after a full flush: too small to measure (Molnar)
/// up to what Linux's ceiling implies: a full flush is chosen over 33
/// invlpgs, so its refill costs at most about 33 × 260 − 96 cycles.
const REFILL: Cost = Cost::range(0.0, 33.0 * 260.0 - 96.0);
/// One page's share of that refill: a page walk, from hidden behind the
/// cache miss it comes with up to (33 × 260 − 96) ÷ 33 cycles.
const WALK: Cost = Cost::range(0.0, (33.0 * 260.0 - 96.0) / 33.0);
/// A shadow-paging CR3 load that switches MMU roots through KVM's cache.
const SHADOW_CR3: Cost = Cost::exactly(5006.0);
const NESTED_EXIT: Cost = Cost::exactly(13142.0);
const NESTED_IPI: Cost = Cost::at_least(15003.0);

const NO_EXIT: &str = "runs natively: no exit";

macro_rules! r {
    ($p:ident, $e:ident, $c:expr, $why:expr, [$($s:expr),*]) => {
        RefCost { platform: Platform::$p, event: Event::$e, cost: $c, why: $why, sources: &[$($s),*] }
    };
}

/// The reference costs, one row per platform and event. Edit here: the
/// report's table, the projection and results.json follow.
pub const REFERENCE: &[RefCost] = &[
    // --- KVM, EPT/NPT, IPIs exit ---
    r!(KvmEpt, InSyncStore, Cost::ZERO, NO_EXIT, ["ept-no-exit", "sdm"]),
    r!(KvmEpt, UnsyncStore, Cost::ZERO, NO_EXIT, ["ept-no-exit", "sdm"]),
    r!(KvmEpt, Invlpg, NATIVE_INVLPG, "native INVLPG; INVLPG exiting is off under EPT", ["flush-costs", "flush-ceiling", "ept-no-exit"]),
    r!(KvmEpt, FullFlush, NATIVE_CR3, "native CR3 flush; CR3-load exiting is off under EPT", ["flush-costs", "ept-no-exit"]),
    r!(KvmEpt, Resync, Cost::ZERO, "no shadow tables to sync", ["kvm-mmu"]),
    r!(KvmEpt, Refill, REFILL, "from unmeasurable up to what the 33-page ceiling implies (33 × 260 − 96); 2-D walks under EPT may cost more", ["flush-costs", "flush-ceiling"]),
    r!(KvmEpt, CrWrite, EXIT, "a CR4 write to a host-owned bit exits (CR4 guest/host mask); priced as a bare exit, mitigations off–on", ["sdm", "cpuid-exit"]),
    r!(KvmEpt, Ipi, IPI, "ICR write exits, delivery and ack: kvm-unit-tests ipi round trip, fastpath–without", ["ipi-fastpath"]),
    r!(KvmEpt, Round, Cost::ZERO, "no cost per round beyond its IPIs", ["ipi-fastpath"]),
    r!(KvmEpt, RemoteInvlpg, NATIVE_INVLPG, "native INVLPG in the target's handler", ["flush-costs"]),
    r!(KvmEpt, RemoteFullFlush, NATIVE_CR3, "native CR3 flush in the target's handler", ["flush-costs"]),
    r!(KvmEpt, Touch, WALK, "a page walk (two-dimensional under EPT, so likely more): hidden behind its cache miss up to the ceiling's share per page", ["flush-costs", "flush-ceiling"]),
    // --- with IPI virtualization ---
    r!(KvmEptIpiv, InSyncStore, Cost::ZERO, NO_EXIT, ["ept-no-exit"]),
    r!(KvmEptIpiv, UnsyncStore, Cost::ZERO, NO_EXIT, ["ept-no-exit"]),
    r!(KvmEptIpiv, Invlpg, NATIVE_INVLPG, "as KVM with EPT", ["flush-costs"]),
    r!(KvmEptIpiv, FullFlush, NATIVE_CR3, "as KVM with EPT", ["flush-costs"]),
    r!(KvmEptIpiv, Resync, Cost::ZERO, "no shadow tables to sync", ["kvm-mmu"]),
    r!(KvmEptIpiv, Refill, REFILL, "as KVM with EPT", ["flush-costs", "flush-ceiling"]),
    r!(KvmEptIpiv, CrWrite, EXIT, "as KVM with EPT", ["sdm", "cpuid-exit"]),
    r!(KvmEptIpiv, Ipi, IPI_IPIV, "the sender's ICR write no longer exits: the round trip less 22.21% (xAPIC) to 15.98% (x2APIC); Sapphire Rapids percentages applied to the Skylake round trip", ["ipiv", "ipi-fastpath"]),
    r!(KvmEptIpiv, Round, Cost::ZERO, "no cost per round beyond its IPIs", ["ipiv"]),
    r!(KvmEptIpiv, RemoteInvlpg, NATIVE_INVLPG, "as KVM with EPT", ["flush-costs"]),
    r!(KvmEptIpiv, RemoteFullFlush, NATIVE_CR3, "as KVM with EPT", ["flush-costs"]),
    r!(KvmEptIpiv, Touch, WALK, "as KVM with EPT", ["flush-costs", "flush-ceiling"]),
    // --- with PV_SEND_IPI ---
    r!(KvmEptPvIpi, InSyncStore, Cost::ZERO, NO_EXIT, ["ept-no-exit"]),
    r!(KvmEptPvIpi, UnsyncStore, Cost::ZERO, NO_EXIT, ["ept-no-exit"]),
    r!(KvmEptPvIpi, Invlpg, NATIVE_INVLPG, "as KVM with EPT", ["flush-costs"]),
    r!(KvmEptPvIpi, FullFlush, NATIVE_CR3, "as KVM with EPT", ["flush-costs"]),
    r!(KvmEptPvIpi, Resync, Cost::ZERO, "no shadow tables to sync", ["kvm-mmu"]),
    r!(KvmEptPvIpi, Refill, REFILL, "as KVM with EPT", ["flush-costs", "flush-ceiling"]),
    r!(KvmEptPvIpi, CrWrite, EXIT, "as KVM with EPT", ["sdm", "cpuid-exit"]),
    r!(KvmEptPvIpi, Ipi, IPI_PV_TARGET, "delivery and ack per target: the round trip less the sender's exit, which the hypercall replaces", ["pv-send-ipi", "ipi-fastpath", "cpuid-exit"]),
    r!(KvmEptPvIpi, Round, EXIT, "one hypercall per round for up to 128 targets, priced as a bare exit", ["pv-send-ipi", "cpuid-exit"]),
    r!(KvmEptPvIpi, RemoteInvlpg, NATIVE_INVLPG, "as KVM with EPT", ["flush-costs"]),
    r!(KvmEptPvIpi, RemoteFullFlush, NATIVE_CR3, "as KVM with EPT", ["flush-costs"]),
    r!(KvmEptPvIpi, Touch, WALK, "as KVM with EPT", ["flush-costs", "flush-ceiling"]),
    // --- KVM with shadow paging ---
    r!(KvmShadow, InSyncStore, Cost::at_least(1018.0), "write-protection fault, then KVM unsyncs the table; at least a bare exit", ["kvm-mmu", "cpuid-exit"]),
    r!(KvmShadow, UnsyncStore, Cost::ZERO, "a plain store to an out-of-sync table", ["kvm-mmu"]),
    r!(KvmShadow, Invlpg, Cost::at_least(1018.0), "INVLPG exits and KVM syncs the entry; at least a bare exit", ["kvm-mmu", "sdm", "cpuid-exit"]),
    r!(KvmShadow, FullFlush, SHADOW_CR3, "CR3 load exits and KVM switches roots through its cache (the vmexit.flat case)", ["mmu-roots", "kvm-mmu"]),
    r!(KvmShadow, Resync, Cost::at_least(0.0), "syncing one unsync table (reading its 512 guest entries): no published figure, priced at zero", ["kvm-mmu"]),
    r!(KvmShadow, Refill, REFILL, "as native: the shadow tables are walked in one dimension", ["flush-costs", "flush-ceiling"]),
    r!(KvmShadow, CrWrite, EXIT, "a CR4 write to a host-owned bit exits; priced as a bare exit", ["sdm", "cpuid-exit"]),
    r!(KvmShadow, Ipi, IPI, "the IPI path does not depend on the MMU mode", ["ipi-fastpath"]),
    r!(KvmShadow, Round, Cost::ZERO, "no cost per round beyond its IPIs", ["ipi-fastpath"]),
    r!(KvmShadow, RemoteInvlpg, Cost::at_least(1018.0), "exits on the target as on the sender", ["kvm-mmu", "cpuid-exit"]),
    r!(KvmShadow, RemoteFullFlush, SHADOW_CR3, "exits on the target as on the sender", ["mmu-roots", "kvm-mmu"]),
    r!(KvmShadow, Touch, Cost::at_least(1018.0), "the shadow entry is missing: a page fault exits and KVM builds it from the guest's entry; at least a bare exit", ["kvm-mmu", "cpuid-exit"]),
    // --- nested, EPT on EPT ---
    r!(NestedEpt, InSyncStore, Cost::ZERO, "L2's tables are walked through L0's shadow of L1's EPT: no exit", ["turtles", "kvm-mmu"]),
    r!(NestedEpt, UnsyncStore, Cost::ZERO, "L2's tables are walked through L0's shadow of L1's EPT: no exit", ["turtles"]),
    r!(NestedEpt, Invlpg, NATIVE_INVLPG, "L1 does not intercept INVLPG when it runs L2 with EPT", ["turtles", "flush-costs"]),
    r!(NestedEpt, FullFlush, NATIVE_CR3, "L1 does not intercept CR3 loads when it runs L2 with EPT", ["turtles", "flush-costs"]),
    r!(NestedEpt, Resync, Cost::ZERO, "no shadow tables of L2's", ["turtles"]),
    r!(NestedEpt, Refill, REFILL, "as native; the walks are longer, so it is likely more", ["flush-costs", "flush-ceiling"]),
    r!(NestedEpt, CrWrite, NESTED_EXIT, "a nested exit (nested CPUID exit)", ["nested-vmexit", "turtles"]),
    r!(NestedEpt, Ipi, NESTED_IPI, "nested self-IPI (self_ipi_tpr); an IPI to another vCPU adds the wake-up", ["nested-vmexit"]),
    r!(NestedEpt, Round, Cost::ZERO, "no cost per round beyond its IPIs", ["nested-vmexit"]),
    r!(NestedEpt, RemoteInvlpg, NATIVE_INVLPG, "as on the sender", ["turtles", "flush-costs"]),
    r!(NestedEpt, RemoteFullFlush, NATIVE_CR3, "as on the sender", ["turtles", "flush-costs"]),
    r!(NestedEpt, Touch, WALK, "a page walk through L0's shadow of L1's EPT; likely more than native", ["turtles", "flush-costs", "flush-ceiling"]),
    // --- nested, L1 shadow-pages L2 ---
    r!(NestedShadow, InSyncStore, Cost::at_least(13142.0), "the write-protection fault is a nested exit", ["nested-vmexit", "kvm-mmu"]),
    r!(NestedShadow, UnsyncStore, Cost::ZERO, "a plain store to an out-of-sync table", ["kvm-mmu"]),
    r!(NestedShadow, Invlpg, Cost::at_least(13142.0), "a nested INVLPG exit", ["nested-vmexit", "kvm-mmu"]),
    r!(NestedShadow, FullFlush, Cost::at_least(13142.0), "a nested CR3-load exit", ["nested-vmexit", "kvm-mmu"]),
    r!(NestedShadow, Resync, Cost::at_least(0.0), "no published figure, priced at zero", ["kvm-mmu"]),
    r!(NestedShadow, Refill, REFILL, "as native: L1's shadow tables are walked in one dimension", ["flush-costs", "flush-ceiling"]),
    r!(NestedShadow, CrWrite, NESTED_EXIT, "a nested exit", ["nested-vmexit"]),
    r!(NestedShadow, Ipi, NESTED_IPI, "nested self-IPI (self_ipi_tpr)", ["nested-vmexit"]),
    r!(NestedShadow, Round, Cost::ZERO, "no cost per round beyond its IPIs", ["nested-vmexit"]),
    r!(NestedShadow, RemoteInvlpg, Cost::at_least(13142.0), "a nested exit on the target", ["nested-vmexit"]),
    r!(NestedShadow, RemoteFullFlush, Cost::at_least(13142.0), "a nested exit on the target", ["nested-vmexit"]),
    r!(NestedShadow, Touch, Cost::at_least(13142.0), "the shadow entry is missing: a nested page-fault exit", ["nested-vmexit", "kvm-mmu"]),
    // --- broadcast invalidation ---
    r!(Invlpgb, InSyncStore, Cost::ZERO, NO_EXIT, ["ept-no-exit"]),
    r!(Invlpgb, UnsyncStore, Cost::ZERO, NO_EXIT, ["ept-no-exit"]),
    r!(Invlpgb, Invlpg, NATIVE_INVLPG, "as KVM with EPT", ["flush-costs"]),
    r!(Invlpgb, FullFlush, NATIVE_CR3, "as KVM with EPT", ["flush-costs"]),
    r!(Invlpgb, Resync, Cost::ZERO, "no shadow tables to sync", ["kvm-mmu"]),
    r!(Invlpgb, Refill, REFILL, "as KVM with EPT", ["flush-costs", "flush-ceiling"]),
    r!(Invlpgb, CrWrite, EXIT, "as KVM with EPT", ["sdm", "cpuid-exit"]),
    r!(Invlpgb, Ipi, Cost::ZERO, "no IPI: the sender broadcasts the invalidation", ["apm", "invlpgb"]),
    r!(Invlpgb, Round, Cost::at_least(260.0), "one INVLPGB over the round's range plus a TLBSYNC; no published cycle count, so at least a native invlpg", ["apm", "invlpgb", "flush-costs"]),
    r!(Invlpgb, RemoteInvlpg, Cost::ZERO, "the targets run no handler", ["apm", "invlpgb"]),
    r!(Invlpgb, RemoteFullFlush, Cost::ZERO, "the targets run no handler", ["apm", "invlpgb"]),
    r!(Invlpgb, Touch, WALK, "as KVM with EPT", ["flush-costs", "flush-ceiling"]),
];

/// The CPI the reference platforms' software term uses. No source: an
/// assumption that a current out-of-order core retires this kernel's
/// code at one to two instructions per cycle. The report says so.
pub const NATIVE_CPI: Cost = Cost::range(0.5, 1.0);

/// The reference cost of `e` on `p`. Every pair has a row; a missing one
/// (a bug in the table, which a test catches) prices as unknown.
pub fn reference(p: Platform, e: Event) -> Option<&'static RefCost> {
    REFERENCE.iter().find(|r| r.platform == p && r.event == e)
}

// --- this run's costs ---------------------------------------------------------

/// The `exits` figure that measures an event on this run, if any. Events
/// the exits suite cannot measure price at zero here (a store does not
/// trap on TCG; a refill and a resync are not measured); the check says
/// so when a figure misses.
fn exit_name(e: Event) -> Option<&'static [&'static str]> {
    match e {
        Event::InSyncStore | Event::UnsyncStore => Some(&["pte_write"]),
        Event::Invlpg | Event::RemoteInvlpg => Some(&["invlpg"]),
        Event::FullFlush | Event::RemoteFullFlush => Some(&["cr3_reload"]),
        Event::CrWrite => Some(&["cr4_write"]),
        Event::Ipi => Some(&["ipi_roundtrip", "self_ipi"]),
        Event::Touch => Some(&["tlb_fill"]),
        Event::Resync | Event::Refill | Event::Round => None,
    }
}

/// One exits figure: timed cycles and counted instructions per operation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExitFigure {
    pub cycles: f64,
    pub instructions: f64,
}

/// This run's model: a CPI and a cost per event.
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    /// Cycles per guest instruction, fitted on the floor figures and the
    /// `pte_write` exit; None without both counted and timed figures.
    pub cpi: Option<f64>,
    /// How many figures the fit used.
    pub fit_figures: usize,
    /// Per event: its cost here, None where the exits suite did not
    /// measure what prices it.
    pub costs: Vec<(Event, Option<f64>)>,
    /// The exits figures the costs came from.
    pub exits: Vec<(&'static str, ExitFigure)>,
}

/// A timed figure's value: in one boot, or the median across boots.
fn timed(t: &Agg, boot: Option<usize>) -> Option<f64> {
    let v = match boot {
        Some(b) => t.value_in(b)?,
        None => t.median,
    };
    v.is_finite().then_some(v)
}

fn exit_figure(s: &Summary, name: &str, boot: Option<usize>) -> Option<ExitFigure> {
    let q = Query {
        suite: Some("exits"),
        name: Some(name),
        ..Query::default()
    };
    let t = s.find(&q, FigKind::Timed)?;
    let c = s.find(&q, FigKind::Counted)?;
    Some(ExitFigure {
        cycles: timed(t, boot)?,
        instructions: c.median.is_finite().then_some(c.median)?,
    })
}

/// The figures whose twins are both there: (counted, timed).
fn pairs<'a>(s: &'a Summary, suite: &'a str) -> impl Iterator<Item = (&'a Agg, &'a Agg)> + 'a {
    s.suite(suite, FigKind::Counted)
        .filter_map(move |c| Some((c, s.twin(c, FigKind::Timed)?)))
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Whether a figure is one the CPI is fitted on: a floor figure whose
/// every cost is a counted event. A `touch` floor from a log that does
/// not declare its touches is left out: each touch is a first access to a
/// fresh translation, which TCG pays for in its software TLB.
fn in_fit(c: &Agg) -> bool {
    c.key.backend == "floor"
        && (!c.key.name.contains("touch") || c.fig.counters.is_some_and(|k| k.touches > 0))
}

impl Fit {
    /// Fits this run. An exits figure costs `C = I × CPI + c`, so an
    /// event's own cost is `c = C − I × CPI`; a floor figure costs
    /// `T = I × CPI + Σ n × c`. Putting the first into the second, each
    /// floor figure (and the bare `pte_write` loop) predicts
    /// `T ≈ CPI × (I − Σ n × I_e) + Σ n × C`, and the CPI is the least
    /// squares fit of those on the relative error: the floor is the same
    /// stores and flushes with no queue, so it holds little but the
    /// instructions and the events.
    pub fn of(s: &Summary) -> Fit {
        Fit::of_boot(s, None)
    }

    /// As [`Fit::of`], on one timed boot's figures alone (`Some(index
    /// into s.boots)`), or on the medians across boots (`None`).
    pub fn of_boot(s: &Summary, boot: Option<usize>) -> Fit {
        let mut exits = Vec::new();
        for e in Event::ALL {
            for name in exit_name(e).unwrap_or(&[]) {
                if exits.iter().any(|(n, _)| n == name) {
                    continue;
                }
                if let Some(f) = exit_figure(s, name, boot) {
                    exits.push((*name, f));
                }
            }
        }
        let find = |e: Event| -> Option<ExitFigure> {
            exit_name(e)?
                .iter()
                .find_map(|n| exits.iter().find(|(x, _)| x == n).map(|(_, f)| *f))
        };
        // The `tlb_fill` loop invalidates before each read: its fill is
        // the loop less the `invlpg` loop.
        let measured = |e: Event| -> Option<ExitFigure> {
            let f = find(e)?;
            if e != Event::Touch {
                return Some(f);
            }
            let inv = find(Event::Invlpg)?;
            Some(ExitFigure {
                cycles: f.cycles - inv.cycles,
                instructions: f.instructions - inv.instructions,
            })
        };
        // Each fit figure as (T, x, b): measured cycles T, and the
        // prediction CPI × x + b, with x its instructions less its events'
        // own exit-loop instructions and b the events' exit-loop cycles.
        let mut points: Vec<(f64, f64, f64)> = Vec::new();
        if let Some(f) = exits.iter().find(|(n, _)| *n == "pte_write").map(|x| x.1) {
            points.push((f.cycles, f.instructions, 0.0));
        }
        for suite in ["mm", "smp"] {
            for (c, t) in pairs(s, suite).filter(|(c, _)| in_fit(c)) {
                let Some(ev) = Events::of(&s.counters_source(c).fig) else {
                    continue;
                };
                let Some(y) = timed(t, boot) else {
                    continue;
                };
                let (mut x, mut b) = (c.median, 0.0);
                let mut known = true;
                for e in Event::ALL {
                    let n = ev.get(e);
                    if n == 0.0 || matches!(e, Event::InSyncStore | Event::UnsyncStore) {
                        continue;
                    }
                    match (exit_name(e), measured(e)) {
                        (None, _) => {}
                        (Some(_), Some(m)) => {
                            b += n * m.cycles;
                            x -= n * m.instructions;
                        }
                        (Some(_), None) => known = false,
                    }
                }
                if known {
                    points.push((y, x, b));
                }
            }
        }
        points.retain(|(t, x, b)| *t > 0.0 && t.is_finite() && x.is_finite() && b.is_finite());
        let fit_figures = points.len();
        // Least squares on the relative error, Σ ((CPI·x + b − T) ÷ T)²:
        // a figure whose cost is mostly its events (a floor is mostly its
        // flush) says little about the CPI and weighs little.
        let (num, den) = points.iter().fold((0.0, 0.0), |(n, d), (t, x, b)| {
            (n + x * (t - b) / (t * t), d + x * x / (t * t))
        });
        let cpi = (den > 0.0)
            .then(|| num / den)
            .filter(|c| c.is_finite() && *c > 0.0);
        let costs = Event::ALL
            .iter()
            .map(|e| {
                let c = match exit_name(*e) {
                    None => Some(0.0),
                    Some(_) => match (measured(*e), cpi) {
                        (Some(m), Some(cpi)) => Some((m.cycles - m.instructions * cpi).max(0.0)),
                        _ => None,
                    },
                };
                (*e, c)
            })
            .collect();
        Fit {
            cpi,
            fit_figures,
            costs,
            exits,
        }
    }

    pub fn cost(&self, e: Event) -> Option<f64> {
        self.costs.iter().find(|(x, _)| *x == e).and_then(|x| x.1)
    }

    /// The predicted cycles per operation of a figure with these
    /// instructions and events; None when a counted event has no cost.
    pub fn predict(&self, instructions: f64, ev: &Events) -> Option<f64> {
        let mut sum = instructions * self.cpi?;
        for e in Event::ALL {
            let n = ev.get(e);
            if n > 0.0 {
                sum += n * self.cost(e)?;
            }
        }
        Some(sum)
    }
}

// --- the check on this run ----------------------------------------------------

/// The suites whose figures the check predicts, and the ±25% target.
pub const CHECKED_SUITES: [&str; 5] = ["mm", "cpu", "smp", "scale", "workload"];
pub const TARGET_ERROR: f64 = 0.25;

/// One figure predicted and measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub suite: String,
    pub name: String,
    pub backend: String,
    pub batch: u64,
    pub vcpus: u64,
    pub instructions: f64,
    pub events: Events,
    pub predicted: f64,
    pub measured: f64,
    /// The median across boots of (predicted − measured) ÷ measured.
    pub error: f64,
    /// The floor figures are in the fit; their error checks only the fit.
    pub in_fit: bool,
    /// The timed figure's spread across boots, (max − min) ÷ median: a
    /// measurement that moves more than the target between boots cannot
    /// be predicted to within it.
    pub spread: f64,
}

impl Check {
    /// The median across boots of (predicted − measured) ÷ measured.
    pub fn error(&self) -> f64 {
        self.error
    }

    pub fn id(&self) -> String {
        format!(
            "{}/{}/{}/batch={}/vcpus={}",
            self.suite, self.name, self.backend, self.batch, self.vcpus
        )
    }

    /// What the residual would mean if one term alone were wrong: the
    /// CPI, or the cost of one of the events the figure counted.
    pub fn diagnosis(&self, fit: &Fit) -> Vec<(String, String)> {
        let residual = self.measured - self.predicted;
        let mut out = Vec::new();
        if let Some(cpi) = fit.cpi {
            if self.instructions > 0.0 {
                let want = cpi + residual / self.instructions;
                out.push((
                    "CPI".to_string(),
                    format!("{cpi:.2} → {want:.2} cycles per instruction"),
                ));
            }
        }
        for e in Event::ALL {
            let n = self.events.get(e);
            // Stores do not trap here, a resync has the full flush's count,
            // and a round is not priced on any measured platform.
            if n <= 0.0
                || matches!(
                    e,
                    Event::UnsyncStore | Event::InSyncStore | Event::Resync | Event::Round
                )
            {
                continue;
            }
            let now = fit.cost(e).unwrap_or(0.0);
            if now + residual / n < 0.0 {
                // No cost can be negative: this term cannot explain it.
                continue;
            }
            out.push((
                e.label().to_string(),
                format!(
                    "{} → {} cycles each",
                    thousands(now),
                    thousands(now + residual / n)
                ),
            ));
        }
        out
    }
}

/// Every figure of the checked suites with a counted and a timed twin
/// and counters, predicted. Each timed boot is predicted with its own
/// fit (`fits`: index into `s.boots`, and that boot's fit), since a
/// shared host runs one boot faster than another; a figure's prediction
/// and measurement are the medians across boots, and its error the median
/// of each boot's error.
pub fn check(s: &Summary, fits: &[(usize, Fit)]) -> Vec<Check> {
    let mut out = Vec::new();
    for suite in CHECKED_SUITES {
        for (c, t) in pairs(s, suite) {
            let Some(ev) = Events::of(&s.counters_source(c).fig) else {
                continue;
            };
            if !c.median.is_finite() {
                continue;
            }
            let (mut preds, mut meas, mut errs) = (Vec::new(), Vec::new(), Vec::new());
            for (boot, fit) in fits {
                let (Some(p), Some(m)) = (fit.predict(c.median, &ev), timed(t, Some(*boot))) else {
                    continue;
                };
                if m > 0.0 && p.is_finite() {
                    preds.push(p);
                    meas.push(m);
                    errs.push((p - m) / m);
                }
            }
            let (Some(predicted), Some(measured), Some(error)) =
                (median(preds), median(meas), median(errs))
            else {
                continue;
            };
            out.push(Check {
                suite: suite.to_string(),
                name: c.key.name.clone(),
                backend: c.key.backend.clone(),
                batch: c.key.batch,
                vcpus: c.key.vcpus,
                instructions: c.median,
                events: ev,
                predicted,
                measured,
                error,
                in_fit: in_fit(c) && (suite == "mm" || suite == "smp"),
                spread: t.spread(),
            });
        }
    }
    out
}

/// Per suite: figures checked (not in the fit), within the target, the
/// median and the largest |error|.
#[derive(Debug, Clone, PartialEq)]
pub struct SuiteError {
    pub suite: String,
    pub figures: usize,
    pub within: usize,
    pub median_abs: f64,
    pub max_abs: f64,
    /// The median signed error, which shows a bias.
    pub median: f64,
    /// Figures whose timed boots spread by more than the target.
    pub unsteady: usize,
}

pub fn suite_errors(checks: &[Check]) -> Vec<SuiteError> {
    CHECKED_SUITES
        .iter()
        .filter_map(|suite| {
            let errs: Vec<f64> = checks
                .iter()
                .filter(|c| c.suite == *suite && !c.in_fit)
                .map(Check::error)
                .collect();
            if errs.is_empty() {
                return None;
            }
            let abs: Vec<f64> = errs.iter().map(|e| e.abs()).collect();
            Some(SuiteError {
                suite: suite.to_string(),
                figures: errs.len(),
                within: abs.iter().filter(|e| **e <= TARGET_ERROR).count(),
                median_abs: median(abs.clone()).unwrap_or(f64::NAN),
                max_abs: abs.iter().cloned().fold(0.0, f64::max),
                median: median(errs).unwrap_or(f64::NAN),
                unsteady: checks
                    .iter()
                    .filter(|c| c.suite == *suite && !c.in_fit && c.spread > TARGET_ERROR)
                    .count(),
            })
        })
        .collect()
}

// --- projections --------------------------------------------------------------

/// A figure's projected cycles per operation on a platform.
pub fn project_one(p: Platform, instructions: f64, ev: &Events) -> Cost {
    let mut sum = NATIVE_CPI.scale(instructions);
    for e in Event::ALL {
        let n = ev.get(e);
        if n > 0.0 {
            let c = reference(p, e).map_or(Cost::at_least(0.0), |r| r.cost);
            sum = sum.plus(c.scale(n));
        }
    }
    sum
}

/// One projected pair: a figure immediate and batched, on every platform.
#[derive(Debug, Clone, PartialEq)]
pub struct Projected {
    pub suite: String,
    pub name: String,
    pub batch: u64,
    pub vcpus: u64,
    /// Per platform (in [`Platform::ALL`] order): (immediate, batched).
    pub cells: Vec<(Cost, Cost)>,
    /// This run: (immediate, batched) as the fit predicts them, and as
    /// the timed boots measured them (medians across boots).
    pub this_run_predicted: Option<(f64, f64)>,
    pub this_run_measured: Option<(f64, f64)>,
}

impl Projected {
    /// immediate ÷ batched with every cost at its low end, and at its
    /// high end (one consistent guess each, not the widest interval).
    pub fn ratio(&self, i: usize) -> (f64, f64) {
        let (a, b) = self.cells[i];
        (a.lo / b.lo, a.hi / b.hi)
    }

    pub fn label(&self) -> String {
        let mut l = format!("`{} {}`", self.suite, self.name);
        if self.suite == "mm" || self.suite == "cpu" {
            let _ = write!(l, ", batch {}", self.batch);
        }
        if self.vcpus > 1 {
            let _ = write!(l, ", {} vCPUs", self.vcpus);
        }
        l
    }
}

/// The figures projected: per suite, each benchmark at its largest batch
/// (mm, cpu) or its most vCPUs (smp, workload), immediate against batched.
pub fn project(s: &Summary, fit: &Fit) -> Vec<Projected> {
    let mut out: Vec<Projected> = Vec::new();
    for suite in ["mm", "cpu", "smp", "workload"] {
        let mut names: Vec<&str> = Vec::new();
        for a in s.suite(suite, FigKind::Counted) {
            if !names.contains(&a.key.name.as_str()) {
                names.push(&a.key.name);
            }
        }
        for name in names {
            let pick = |backend: &str| {
                s.suite(suite, FigKind::Counted)
                    .filter(|a| a.key.name == name && a.key.backend == backend)
                    .max_by_key(|a| (a.key.vcpus, a.key.batch))
            };
            let (Some(imm), Some(bat)) = (pick("immediate"), pick("batched")) else {
                continue;
            };
            let (Some(ei), Some(eb)) = (Events::of(&imm.fig), Events::of(&bat.fig)) else {
                continue;
            };
            let measured = |a: &Agg| s.twin(a, FigKind::Timed).map(|t| t.median);
            out.push(Projected {
                suite: suite.to_string(),
                name: name.to_string(),
                batch: bat.key.batch,
                vcpus: bat.key.vcpus,
                this_run_predicted: fit
                    .predict(imm.median, &ei)
                    .zip(fit.predict(bat.median, &eb)),
                this_run_measured: measured(imm).zip(measured(bat)),
                cells: Platform::ALL
                    .iter()
                    .map(|p| {
                        (
                            project_one(*p, imm.median, &ei),
                            project_one(*p, bat.median, &eb),
                        )
                    })
                    .collect(),
            });
        }
    }
    out
}

// --- everything, for the report and results.json ------------------------------

#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// The fit on the medians across timed boots: the costs the report
    /// shows.
    pub fit: Fit,
    /// Each timed boot's own fit (index into `Summary::boots`), which the
    /// check predicts that boot with.
    pub boot_fits: Vec<(usize, Fit)>,
    pub checks: Vec<Check>,
    pub suites: Vec<SuiteError>,
    pub projected: Vec<Projected>,
}

pub fn build(s: &Summary) -> Model {
    let fit = Fit::of(s);
    let boot_fits: Vec<(usize, Fit)> = s
        .boots
        .iter()
        .enumerate()
        .filter(|(_, b)| b.kind() == FigKind::Timed)
        .map(|(i, _)| (i, Fit::of_boot(s, Some(i))))
        .filter(|(_, f)| f.cpi.is_some())
        .collect();
    let checks = check(s, &boot_fits);
    let suites = suite_errors(&checks);
    let projected = project(s, &fit);
    Model {
        fit,
        boot_fits,
        checks,
        suites,
        projected,
    }
}

/// The columns the model's tables use, defined for the report's glossary
/// (report.rs looks here as well as in its own COLUMNS).
pub const COLUMNS: &[(&str, &str)] = &[
    ("event", "what the model prices, as the guest counts it"),
    ("this run", "the event's cost here: its `exits` figure in cycles, less its own instructions at the fitted CPI"),
    ("from", "the `exits` figure the cost comes from"),
    ("suite", "the benchmark suite"),
    ("checked", "figures predicted, the floor's left out (it is in the fit)"),
    ("within ±25%", "figures whose prediction is within 25% of the measurement"),
    ("median error", "the median of |predicted − measured| ÷ measured"),
    ("largest error", "the largest |predicted − measured| ÷ measured"),
    ("bias", "the median signed error: negative, the model predicts too little"),
    ("unsteady", "figures whose timed boots spread by more than 25% ((max − min) ÷ median): their measurement moves more between boots than the target allows"),
    ("predicted", "instructions × CPI + Σ events × this run's costs, cycles per operation"),
    ("measured cycles", "the timed median across boots, cycles per operation"),
    ("error", "(predicted − measured) ÷ measured"),
    ("residual as", "what one term alone would have to cost for the prediction to match"),
    ("platform", "a host class the model projects onto (its costs under *Reference costs*); platforms whose cells would repeat share a row"),
    ("cost", "cycles per event: a range where sources disagree, ≥ where only a lower bound is published"),
    ("why", "what the cost stands for on that platform"),
    ("sources", "the numbered sources below the table"),
];

// --- markdown -----------------------------------------------------------------

/// Prints the definitions of some of [`COLUMNS`], before their table.
fn define(out: &mut String, keys: &[&str]) {
    for k in keys {
        if let Some((k, d)) = COLUMNS.iter().find(|(c, _)| c == k) {
            let _ = writeln!(out, "- **{k}**: {d}.");
        }
    }
    let _ = writeln!(out);
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:+.0}%", x * 100.0)
    } else {
        "n/a".into()
    }
}

fn ratio_range((lo, hi): (f64, f64)) -> String {
    if !lo.is_finite() || !hi.is_finite() {
        return "n/a".into();
    }
    if (ratio(lo) == ratio(hi)) || (hi - lo).abs() < 0.005 {
        ratio(lo)
    } else {
        let (a, b) = if lo <= hi { (lo, hi) } else { (hi, lo) };
        format!("{}–{}", ratio(a), ratio(b))
    }
}

/// The model's sections of report.md: the check, the projections, the
/// reference costs with their sources.
pub fn markdown(out: &mut String, m: &Model) {
    check_section(out, m);
    projection_section(out, m);
    reference_section(out);
}

fn check_section(out: &mut String, m: &Model) {
    let _ = writeln!(out, "## The cost model, checked on this run\n");
    let _ = writeln!(
        out,
        "The model: cycles/op ≈ guest instructions/op × CPI + Σ counted events/op × cost(event, platform). \
         On this run it is checked: each timed figure is predicted from its counted twin's instructions, \
         a CPI fitted once on the floor figures and the bare `pte_write` loop, and the costs the `exits` \
         suite measured here, and compared with its measurement. One CPI and one cost per event serve \
         every figure; nothing is fitted per figure. The target is ±{:.0}% for the mm, smp and workload \
         figures.\n",
        TARGET_ERROR * 100.0
    );
    let Some(cpi) = m.fit.cpi else {
        let _ = writeln!(
            out,
            "Not checked: the check needs a counting boot and a timed boot of the `exits` and `mm` suites \
             (this run has {}).\n",
            if m.fit.exits.is_empty() {
                "no exits figure with both"
            } else {
                "no floor figure with both"
            }
        );
        return;
    };
    let _ = writeln!(
        out,
        "Fitted CPI: **{cpi:.2}** cycles per guest instruction (least squares over {} figures on the relative error, on the medians \
         across boots). Each timed boot is predicted with its own fit, since a shared host runs one boot faster \
         than another (CPI per boot: {}). This run's costs per event, from the medians across boots:\n",
        m.fit.fit_figures,
        if m.boot_fits.is_empty() {
            "none".to_string()
        } else {
            m.boot_fits
                .iter()
                .map(|(_, f)| f.cpi.map_or("?".into(), |c| format!("{c:.2}")))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    define(out, &["event", "this run", "from"]);
    let _ = writeln!(out, "| event | this run | from |\n|---|---|---|");
    for (e, c) in &m.fit.costs {
        let from = exit_name(*e).map_or("not measured here: priced at 0".to_string(), |ns| {
            let got: Vec<String> = ns
                .iter()
                .filter_map(|n| {
                    m.fit.exits.iter().find(|(x, _)| x == n).map(|(n, f)| {
                        format!(
                            "`{n}`: {} cycles, {} instructions",
                            thousands(f.cycles),
                            thousands(f.instructions)
                        )
                    })
                })
                .take(1)
                .collect();
            if got.is_empty() {
                format!("`{}` not measured", ns[0])
            } else if *e == Event::Touch {
                format!("{}, less `invlpg`", got.join(""))
            } else {
                got.join("")
            }
        });
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            e.label(),
            c.map_or("unknown".into(), thousands),
            cell(&from)
        );
    }
    let _ = writeln!(out);
    define(
        out,
        &[
            "suite",
            "checked",
            "within ±25%",
            "median error",
            "largest error",
            "bias",
            "unsteady",
        ],
    );
    let _ = writeln!(
        out,
        "| suite | checked | within ±25% | median error | largest error | bias | unsteady |\n|---|---|---|---|---|---|---|"
    );
    for se in &m.suites {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0}% | {:.0}% | {} | {} |",
            se.suite,
            se.figures,
            se.within,
            se.median_abs * 100.0,
            se.max_abs * 100.0,
            pct(se.median),
            se.unsteady
        );
    }
    let _ = writeln!(out);
    let checked: usize = m.suites.iter().map(|x| x.figures).sum();
    let unsteady: usize = m.suites.iter().map(|x| x.unsteady).sum();
    if checked > 0 && unsteady * 2 > checked {
        let _ = writeln!(
            out,
            "**The measurements move more than the target.** {unsteady} of the {checked} checked figures spread by \
             more than {:.0}% across this run's timed boots (the fitted CPI per boot above shows how much the \
             host's speed changed between them), so an error within ±{:.0}% cannot be told apart from the \
             host's noise here; the counted figures, which do not move, are the ones to compare builds on.\n",
            TARGET_ERROR * 100.0,
            TARGET_ERROR * 100.0
        );
    }
    // Per figure: every one, in one table; a miss says which term would
    // have to change.
    let _ = writeln!(
        out,
        "Every figure, predicted against measured (cycles per operation; *fit* marks the floor figures the \
         CPI was fitted on):\n"
    );
    define(
        out,
        &["predicted", "measured cycles", "error", "residual as"],
    );
    let _ = writeln!(
        out,
        "| figure | predicted | measured cycles | error | residual as |\n|---|---|---|---|---|"
    );
    for c in &m.checks {
        let miss = c.error().abs() > TARGET_ERROR;
        let diag = if miss {
            c.diagnosis(&m.fit)
                .iter()
                .map(|(t, v)| format!("{t}: {v}"))
                .collect::<Vec<_>>()
                .join("; ")
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "| `{}`{} | {} | {} | {}{} | {} |",
            c.id(),
            if c.in_fit { " (fit)" } else { "" },
            thousands(c.predicted),
            thousands(c.measured),
            pct(c.error()),
            if miss { " ✗" } else { "" },
            cell(&diag)
        );
    }
    let _ = writeln!(out);
    misses(out, m);
}

/// The term that best explains a group of misses: the one every missed
/// figure of the group has, whose needed value (what it would have to be
/// for each figure's prediction to match) varies least across them.
#[derive(Debug, Clone, PartialEq)]
pub struct Suspect {
    /// "CPI" or an event's label.
    pub term: String,
    /// Its value in the fit (cycles per instruction, or per event).
    pub now: f64,
    /// The needed value: the median, the least and the greatest.
    pub needed: f64,
    pub lo: f64,
    pub hi: f64,
}

pub fn suspect(missed: &[&Check], fit: &Fit) -> Option<Suspect> {
    if missed.is_empty() {
        return None;
    }
    let mut best: Option<(f64, Suspect)> = None;
    let mut consider = |term: String, now: f64, needed: Vec<f64>| {
        if needed.len() != missed.len() || needed.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return;
        }
        let lo = needed.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = needed.iter().cloned().fold(0.0, f64::max);
        let mid = median(needed).unwrap_or(f64::NAN);
        // Spread relative to the change it asks for (a term that needs
        // the same change everywhere is the likeliest), plus the change
        // relative to the term (the smaller correction is the likelier,
        // which decides between terms one figure cannot tell apart).
        let change = (mid - now).abs().max(f64::MIN_POSITIVE);
        let relative = if now > 0.0 {
            change / now
        } else {
            f64::MAX / 4.0
        };
        let score = (hi - lo) / change + relative;
        if best.as_ref().is_none_or(|(s, _)| score < *s) {
            best = Some((
                score,
                Suspect {
                    term,
                    now,
                    needed: mid,
                    lo,
                    hi,
                },
            ));
        }
    };
    if let Some(cpi) = fit.cpi {
        let needed = missed
            .iter()
            .filter(|c| c.instructions > 0.0)
            .map(|c| cpi + (c.measured - c.predicted) / c.instructions)
            .collect();
        consider("CPI".to_string(), cpi, needed);
    }
    for e in Event::ALL {
        if matches!(
            e,
            Event::UnsyncStore | Event::InSyncStore | Event::Resync | Event::Round
        ) {
            continue;
        }
        let now = fit.cost(e).unwrap_or(0.0);
        let needed = missed
            .iter()
            .filter(|c| c.events.get(e) > 0.0)
            .map(|c| now + (c.measured - c.predicted) / c.events.get(e))
            .collect();
        consider(e.label().to_string(), now, needed);
    }
    best.map(|(_, s)| s)
}

/// Which term is wrong, per suite that misses (4 KiB and 2 MiB figures
/// apart: TCG treats an invalidation inside a large page differently).
fn misses(out: &mut String, m: &Model) {
    let mut any = false;
    for se in &m.suites {
        for large in [false, true] {
            let missed: Vec<&Check> = m
                .checks
                .iter()
                .filter(|c| {
                    c.suite == se.suite
                        && !c.in_fit
                        && c.error().abs() > TARGET_ERROR
                        && c.name.ends_with("_2m") == large
                })
                .collect();
            if missed.is_empty() {
                continue;
            }
            if !any {
                let _ = writeln!(
                    out,
                    "Where the model misses, and the term that explains it best:\n"
                );
                any = true;
            }
            for (how, low) in [("predicted too low", true), ("predicted too high", false)] {
                let g: Vec<&Check> = missed
                    .iter()
                    .copied()
                    .filter(|c| (c.error() < 0.0) == low)
                    .collect();
                if g.is_empty() {
                    continue;
                }
                let what = match suspect(&g, &m.fit) {
                    Some(s) if s.term == "CPI" => format!(
                        "the instruction term: a CPI of {:.2} (from {:.2} to {:.2} across them) instead of {:.2}",
                        s.needed, s.lo, s.hi, s.now
                    ),
                    Some(s) => format!(
                        "{}: {} cycles each (from {} to {}) instead of {}",
                        s.term,
                        thousands(s.needed),
                        thousands(s.lo),
                        thousands(s.hi),
                        thousands(s.now)
                    ),
                    None => "no single term".to_string(),
                };
                let _ = writeln!(
                    out,
                    "- **{}**{}: {} {how}; best explained by {what}.",
                    se.suite,
                    if large { ", 2 MiB pages" } else { "" },
                    if g.len() == 1 {
                        "1 figure".to_string()
                    } else {
                        format!("{} figures", g.len())
                    }
                );
            }
        }
    }
    if any {
        let _ = writeln!(
            out,
            "\nWhat this run prices at zero: the TLB refill after a full flush (TCG refills its software TLB on \
             the next accesses) and the resync of unsync tables (no shadow paging here). What the exits suite \
             measures in a setting unlike the figures': an IPI round trip to an idle vCPU, while a shootdown \
             interrupts busy ones (single-threaded TCG runs one vCPU at a time, so an IPI waits for its \
             target's turn); an `invlpg` of a 4 KiB page, while TCG flushes its whole TLB for an invalidation \
             inside a 2 MiB page it has cached. And one CPI for all code, while TCG's cost per instruction \
             depends on the instructions (the queue's loops against the API's calls).\n"
        );
    }
}

/// Platforms whose cells would repeat share a row.
fn collapsed(rows: Vec<(Platform, Vec<String>)>) -> Vec<(Vec<Platform>, Vec<String>)> {
    let mut out: Vec<(Vec<Platform>, Vec<String>)> = Vec::new();
    for (p, cells) in rows {
        match out.iter_mut().find(|(_, c)| *c == cells) {
            Some((ps, _)) => ps.push(p),
            None => out.push((vec![p], cells)),
        }
    }
    out
}

fn projection_section(out: &mut String, m: &Model) {
    let _ = writeln!(
        out,
        "## Projection onto other platforms (arithmetic, not a measurement)\n"
    );
    let _ = writeln!(
        out,
        "The same model with published costs (*Reference costs* below) in place of this run's: the counted \
         instructions at an assumed native CPI of {} (no source: a current core retiring this code at one to \
         two instructions per cycle), plus each counted event at its platform's cost. Ranges follow the \
         sources' ranges (both ends of every range at once: the low end and the high end); ≥ marks a total \
         with a lower-bound cost in it. It assumes the guest issues the same operations there as here. \
         Under shadow paging the first store to a leaf table per sync epoch faults and the rest are plain \
         stores, so what batching saves there is the `invlpg` exits and the IPIs, not the stores. With \
         several vCPUs the instructions are every vCPU's (the readers' loops too), which overstates the \
         software term. The guest issues no hypercall of its own (it drains its queue itself); the one \
         PV_SEND_IPI would add is priced per shootdown round.\n",
        NATIVE_CPI.text()
    );
    if m.projected.is_empty() {
        let _ = writeln!(
            out,
            "No figure has both an immediate and a batched counted twin with counters: nothing to project.\n"
        );
        return;
    }
    // One table: immediate ÷ batched, one column per projected figure,
    // one row per platform, repeated rows collapsed.
    let _ = writeln!(
        out,
        "Projected immediate ÷ batched (above 1: batching saves); figures whose columns would repeat are \
         merged:\n"
    );
    // Each figure's column: this run predicted and measured, then every
    // platform; figures whose columns are the same share one.
    let this_run =
        |r: Option<(f64, f64)>| r.map_or("n/a".to_string(), |(i, b)| ratio_range((i / b, i / b)));
    let mut cols: Vec<(Vec<String>, Vec<String>)> = Vec::new();
    for pr in &m.projected {
        let mut cells = vec![
            this_run(pr.this_run_predicted),
            this_run(pr.this_run_measured),
        ];
        cells.extend((0..Platform::ALL.len()).map(|i| ratio_range(pr.ratio(i))));
        match cols.iter_mut().find(|(_, c)| *c == cells) {
            Some((names, _)) => names.push(pr.label()),
            None => cols.push((vec![pr.label()], cells)),
        }
    }
    define(out, &["platform"]);
    let mut head = "| platform |".to_string();
    let mut rule = "|---|".to_string();
    for (names, _) in &cols {
        let _ = write!(head, " {} |", cell(&names.join("; ")));
        rule += "---|";
    }
    let _ = writeln!(out, "{head}\n{rule}");
    for (i, label) in [
        "this run, the model's prediction",
        "this run, measured (timed medians)",
    ]
    .iter()
    .enumerate()
    {
        let cells: Vec<String> = cols.iter().map(|(_, c)| c[i].clone()).collect();
        let _ = writeln!(out, "| {label} | {} |", cells.join(" | "));
    }
    let rows: Vec<(Platform, Vec<String>)> = Platform::ALL
        .iter()
        .enumerate()
        .map(|(i, p)| (*p, cols.iter().map(|(_, c)| c[i + 2].clone()).collect()))
        .collect();
    for (ps, cells) in collapsed(rows) {
        let label: Vec<&str> = ps.iter().map(|p| p.label()).collect();
        let _ = writeln!(
            out,
            "| {} | {} |",
            cell(&label.join("; ")),
            cells.join(" | ")
        );
    }
    let _ = writeln!(out);
    // Per suite: the cycles behind the ratios.
    for suite in ["mm", "cpu", "smp", "workload"] {
        let prs: Vec<&Projected> = m.projected.iter().filter(|p| p.suite == suite).collect();
        if prs.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "`{suite}`, projected cycles per operation, immediate → batched:\n"
        );
        let mut head = "| platform |".to_string();
        let mut rule = "|---|".to_string();
        for pr in &prs {
            let _ = write!(head, " {} |", cell(&pr.label()));
            rule += "---|";
        }
        let rows: Vec<(Platform, Vec<String>)> = Platform::ALL
            .iter()
            .enumerate()
            .map(|(i, p)| {
                (
                    *p,
                    prs.iter()
                        .map(|pr| format!("{} → {}", pr.cells[i].0.text(), pr.cells[i].1.text()))
                        .collect(),
                )
            })
            .collect();
        let _ = writeln!(out, "{head}\n{rule}");
        for (ps, cells) in collapsed(rows) {
            let label: Vec<&str> = ps.iter().map(|p| p.label()).collect();
            let _ = writeln!(
                out,
                "| {} | {} |",
                cell(&label.join("; ")),
                cells.join(" | ")
            );
        }
        let _ = writeln!(out);
    }
}

fn reference_section(out: &mut String) {
    let _ = writeln!(out, "## Reference costs and sources\n");
    let _ = writeln!(
        out,
        "Cycles per event on each platform. Ranges span the sources (or one source's two settings); ≥ marks a \
         lower bound where no published figure covers the whole cost. The CPU generations differ between \
         sources (each is named below), so a row mixes generations wherever its sources do.\n"
    );
    let mut used: Vec<&str> = Vec::new();
    for r in REFERENCE {
        for k in r.sources {
            if !used.contains(k) {
                used.push(k);
            }
        }
    }
    let num = |k: &str| used.iter().position(|x| *x == k).map_or(0, |i| i + 1);
    for p in Platform::ALL {
        let _ = writeln!(out, "**{}**\n", p.label());
        if p == Platform::ALL[0] {
            define(out, &["event", "cost", "why", "sources"]);
        }
        let _ = writeln!(out, "| event | cost | why | sources |\n|---|---|---|---|");
        for r in REFERENCE.iter().filter(|r| r.platform == p) {
            let refs: Vec<String> = r.sources.iter().map(|k| format!("[{}]", num(k))).collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                r.event.label(),
                r.cost.text(),
                cell(r.why),
                refs.join(" ")
            );
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "Sources:\n");
    for (i, k) in used.iter().enumerate() {
        match sources::get(k) {
            Some(s) => {
                let _ = writeln!(
                    out,
                    "{}. {} — {}, {}. <{}>",
                    i + 1,
                    s.cite,
                    s.cpu,
                    s.year,
                    s.link
                );
            }
            None => {
                let _ = writeln!(out, "{}. (missing source `{k}`)", i + 1);
            }
        }
    }
    let _ = writeln!(out);
}

// --- the plot -----------------------------------------------------------------

const SERIES: [plotters::style::RGBColor; 6] = [
    plotters::style::RGBColor(0x1f, 0x77, 0xb4),
    plotters::style::RGBColor(0xd6, 0x27, 0x28),
    plotters::style::RGBColor(0x2c, 0xa0, 0x2c),
    plotters::style::RGBColor(0x94, 0x67, 0xbd),
    plotters::style::RGBColor(0xff, 0x7f, 0x0e),
    plotters::style::RGBColor(0x8c, 0x56, 0x4b),
];

/// `projection.svg`: the projected immediate ÷ batched per platform, one
/// series per projected figure, a bar from the low-cost to the high-cost
/// end of each range. The y axis is log10 of the ratio drawn on a linear
/// axis, so no value can make an axis bound infinite; a ratio that is not
/// finite and positive is left out.
pub fn plot(s: &Summary, m: &Model) -> Result<Option<crate::plots::Plot>, crate::plots::Error> {
    let file = "projection.svg".to_string();
    let title =
        "projected immediate ÷ batched, per platform (cost model, not a measurement)".to_string();
    let logr = |x: f64| (x.is_finite() && x > 0.0).then(|| x.log10());
    // Per series: its name, and per platform index the log10 ratio range.
    type Bars = Vec<(usize, f64, f64)>;
    let mut series: Vec<(String, Bars)> = Vec::new();
    for pr in &m.projected {
        let pts: Vec<(usize, f64, f64)> = (0..Platform::ALL.len())
            .filter_map(|i| {
                let (a, b) = pr.ratio(i);
                let (a, b) = (logr(a)?, logr(b)?);
                Some((i, a.min(b), a.max(b)))
            })
            .collect();
        if !pts.is_empty() {
            series.push((pr.label().replace('`', ""), pts));
        }
    }
    if series.is_empty() {
        return Ok(None);
    }
    let (mut lo, mut hi) = (0.0f64, 0.0f64);
    for (_, pts) in &series {
        for (_, a, b) in pts {
            lo = lo.min(*a);
            hi = hi.max(*b);
        }
    }
    let (lo, hi) = (lo.floor(), hi.ceil().max(lo.floor() + 1.0));
    let draw = |buf: &mut String| -> Result<(), Box<dyn std::error::Error>> {
        use plotters::prelude::*;
        let n = Platform::ALL.len();
        let root = SVGBackend::with_string(buf, (1100, 620)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(&title, ("sans-serif", 20))?;
        let root = root.titled(&crate::report::platform_line(s), ("sans-serif", 12))?;
        let (plot_area, legend) = root.split_horizontally(800);
        let mut chart = ChartBuilder::on(&plot_area)
            .margin(12)
            .x_label_area_size(150)
            .y_label_area_size(64)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), lo..hi)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&|v| {
                let i = v.round();
                if (v - i).abs() > 0.01 || i < 0.0 {
                    return String::new();
                }
                Platform::ALL
                    .get(i as usize)
                    .map(|p| p.key().to_string())
                    .unwrap_or_default()
            })
            .y_labels((hi - lo) as usize + 1)
            .y_label_formatter(&|v| ratio(10f64.powf(*v)))
            .y_desc("immediate ÷ batched (log scale)")
            .x_desc("platform")
            .label_style(("sans-serif", 12))
            .draw()?;
        chart.draw_series(LineSeries::new(
            [(-0.5, 0.0), (n as f64 - 0.5, 0.0)],
            BLACK.mix(0.4),
        ))?;
        let k = series.len() as f64;
        for (j, (_, pts)) in series.iter().enumerate() {
            let colour = SERIES[j % SERIES.len()];
            let dx = (j as f64 - (k - 1.0) / 2.0) * (0.6 / k.max(1.0));
            chart.draw_series(pts.iter().map(|(i, a, b)| {
                Rectangle::new(
                    [(*i as f64 + dx - 0.02, *a), (*i as f64 + dx + 0.02, *b)],
                    colour.filled(),
                )
            }))?;
            chart.draw_series(pts.iter().map(|(i, a, b)| {
                Circle::new((*i as f64 + dx, (a + b) / 2.0), 3, colour.filled())
            }))?;
        }
        let mut y = 30;
        for (j, (name, _)) in series.iter().enumerate() {
            let colour = SERIES[j % SERIES.len()];
            legend.draw(&Rectangle::new([(10, y - 5), (22, y + 5)], colour.filled()))?;
            legend.draw(&Text::new(name.clone(), (28, y - 6), ("sans-serif", 12)))?;
            y += 18;
        }
        root.present()?;
        Ok(())
    };
    let mut svg = String::new();
    draw(&mut svg).map_err(|e| crate::plots::Error {
        file: file.clone(),
        reason: e.to_string(),
    })?;
    Ok(Some(crate::plots::Plot {
        file,
        title,
        caption: "The cost model's projected immediate ÷ batched for each projected figure on each platform \
                  (keys as in the Projection table: kvm_ept, kvm_ept_ipiv, kvm_ept_pv_send_ipi, kvm_shadow, \
                  nested_ept, nested_shadow, invlpgb). Each bar spans the ratio with every cost at the low end \
                  of its range to every cost at the high end; above the line at 1x batching saves. Arithmetic \
                  on counted events and published costs, not a measurement."
            .into(),
        svg,
    }))
}

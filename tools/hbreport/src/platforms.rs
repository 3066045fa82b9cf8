//! The reference platforms the cost model projects onto, and what each
//! event costs on each, from the published sources of sources.rs: one row
//! per platform and event in [`REFERENCE`], a range where sources (or one
//! source's two settings) disagree, a lower bound where nothing more is
//! published. model.rs applies them.

use crate::model::Event;
use crate::report::thousands;

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

    pub fn scale(self, k: f64) -> Cost {
        Cost {
            lo: self.lo * k,
            hi: self.hi * k,
            at_least: self.at_least,
        }
    }

    pub fn plus(self, o: Cost) -> Cost {
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

//! What the guest runs on: hypervisor detection, KVM paravirtual features,
//! CPU capabilities and TSC frequency, decoded from CPUID.
//!
//! In the boot flow this comes after the firmware tables: the kernel runs
//! [`detect`] once on the boot CPU, prints the result as an `HB` record, and
//! uses [`tsc_from_cpuid`] (falling back to kvmclock or the ACPI PM timer,
//! whose arithmetic also lives here) to calibrate its clock.
//!
//! Everything here is pure decoding: CPUID comes in through the [`Cpuid`]
//! trait, so the kernel passes the real instruction and the host tests pass a
//! table. Nothing here can fail, so there is no `Error` type: an absent or
//! unusable leaf is `None` (or `false`), which is what the caller has to
//! handle anyway.
//!
//! References: Intel SDM vol. 2A, "CPUID"; AMD APM vol. 3, "CPUID";
//! Linux `Documentation/virt/kvm/x86/cpuid.rst` (KVM leaves) and
//! `Documentation/virt/kvm/x86/msr.rst` (pvclock).

use crate::acpi_tables::ACPI_PM_TIMER_HZ;
use core::fmt;

/// Executes CPUID. Returns `[eax, ebx, ecx, edx]`.
pub trait Cpuid {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4];
}

/// Any `Fn(leaf, subleaf) -> [eax, ebx, ecx, edx]` closure is a CPUID source.
impl<F: Fn(u32, u32) -> [u32; 4]> Cpuid for F {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        self(leaf, subleaf)
    }
}

/// CPUID.1:ECX bit 31, reserved for hypervisors to say "you are a guest"
/// (Intel SDM vol. 2A, table 3-10; AMD APM vol. 3, E.3.2).
const CPUID_1_ECX_HYPERVISOR: u32 = 1 << 31;
const CPUID_1_ECX_PCID: u32 = 1 << 17;
const CPUID_1_ECX_X2APIC: u32 = 1 << 21;
/// CPUID.(EAX=7,ECX=0):EBX bit 10.
const CPUID_7_EBX_INVPCID: u32 = 1 << 10;
/// CPUID.80000001H:EDX bits 20 (NX/XD) and 26 (1 GiB pages).
const CPUID_80000001_EDX_NX: u32 = 1 << 20;
const CPUID_80000001_EDX_PDPE1GB: u32 = 1 << 26;
/// CPUID.80000007H:EDX bit 8, the invariant TSC.
const CPUID_80000007_EDX_INVARIANT_TSC: u32 = 1 << 8;

/// The hypervisor range starts here; a hypervisor puts its signature in
/// EBX, ECX, EDX and its highest leaf in EAX.
pub const HYPERVISOR_CPUID_BASE: u32 = 0x4000_0000;
/// With Hyper-V enlightenments on, KVM (and Xen) move their own leaves up by
/// 0x100 so that the Hyper-V leaves can sit at the base; Linux's
/// `hypervisor_cpuid_base()` scans in these steps.
pub const HYPERVISOR_CPUID_STRIDE: u32 = 0x100;
/// `KVM_CPUID_SIGNATURE` and `KVM_CPUID_FEATURES` from cpuid.rst, relative
/// to wherever the KVM leaves were found.
pub const KVM_CPUID_SIGNATURE: u32 = 0x4000_0000;
pub const KVM_CPUID_FEATURES: u32 = 0x4000_0001;
/// The VMware-defined timing leaf, which QEMU also offers
/// (`-cpu ...,vmware-cpuid-freq=on`): EAX = TSC kHz, EBX = APIC bus kHz.
pub const HV_TIMING_LEAF: u32 = 0x4000_0010;

/// Which hypervisor, from its CPUID signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hypervisor {
    /// CPUID.1:ECX bit 31 is clear: bare metal, or a hypervisor that hides.
    None,
    Kvm,
    /// QEMU's emulator (`-accel tcg`).
    Tcg,
    HyperV,
    Xen,
    Vmware,
    Bhyve,
    /// Some other signature, kept verbatim.
    Other([u8; 12]),
}

impl Hypervisor {
    fn from_signature(sig: &[u8; 12]) -> Hypervisor {
        match sig {
            b"KVMKVMKVM\0\0\0" => Hypervisor::Kvm,
            b"TCGTCGTCGTCG" => Hypervisor::Tcg,
            b"Microsoft Hv" => Hypervisor::HyperV,
            b"XenVMMXenVMM" => Hypervisor::Xen,
            b"VMwareVMware" => Hypervisor::Vmware,
            b"bhyve bhyve " => Hypervisor::Bhyve,
            other => Hypervisor::Other(*other),
        }
    }

    /// The short lowercase name used in `HB` records. For
    /// [`Hypervisor::Other`] use the `Display` impl, which prints the
    /// signature itself.
    pub fn name(&self) -> &'static str {
        match self {
            Hypervisor::None => "none",
            Hypervisor::Kvm => "kvm",
            Hypervisor::Tcg => "tcg",
            Hypervisor::HyperV => "hyperv",
            Hypervisor::Xen => "xen",
            Hypervisor::Vmware => "vmware",
            Hypervisor::Bhyve => "bhyve",
            Hypervisor::Other(_) => "other",
        }
    }
}

impl fmt::Display for Hypervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hypervisor::Other(sig) => {
                f.write_str("other:")?;
                for &b in sig.iter().take_while(|&&b| b != 0) {
                    let c = if b.is_ascii_graphic() || b == b' ' {
                        b as char
                    } else {
                        '?'
                    };
                    fmt::Write::write_char(f, c)?;
                }
                Ok(())
            }
            known => f.write_str(known.name()),
        }
    }
}

/// KVM paravirtual feature bits, `KVM_CPUID_FEATURES` EAX (cpuid.rst).
pub const KVM_FEATURE_CLOCKSOURCE: u32 = 0;
pub const KVM_FEATURE_NOP_IO_DELAY: u32 = 1;
pub const KVM_FEATURE_MMU_OP: u32 = 2;
pub const KVM_FEATURE_CLOCKSOURCE2: u32 = 3;
pub const KVM_FEATURE_ASYNC_PF: u32 = 4;
pub const KVM_FEATURE_STEAL_TIME: u32 = 5;
pub const KVM_FEATURE_PV_EOI: u32 = 6;
pub const KVM_FEATURE_PV_UNHALT: u32 = 7;
pub const KVM_FEATURE_PV_TLB_FLUSH: u32 = 9;
pub const KVM_FEATURE_ASYNC_PF_VMEXIT: u32 = 10;
pub const KVM_FEATURE_PV_SEND_IPI: u32 = 11;
pub const KVM_FEATURE_POLL_CONTROL: u32 = 12;
pub const KVM_FEATURE_PV_SCHED_YIELD: u32 = 13;
pub const KVM_FEATURE_ASYNC_PF_INT: u32 = 14;
pub const KVM_FEATURE_MSI_EXT_DEST_ID: u32 = 15;
pub const KVM_FEATURE_HC_MAP_GPA_RANGE: u32 = 16;
pub const KVM_FEATURE_MIGRATION_CONTROL: u32 = 17;
pub const KVM_FEATURE_CLOCKSOURCE_STABLE_BIT: u32 = 24;

/// Names of the 32 feature bits, lowercase without the `KVM_FEATURE_`
/// prefix; bits cpuid.rst does not define are called `bit<N>`.
const PV_FEATURE_NAMES: [&str; 32] = [
    "clocksource",
    "nop_io_delay",
    "mmu_op",
    "clocksource2",
    "async_pf",
    "steal_time",
    "pv_eoi",
    "pv_unhalt",
    "bit8",
    "pv_tlb_flush",
    "async_pf_vmexit",
    "pv_send_ipi",
    "poll_control",
    "pv_sched_yield",
    "async_pf_int",
    "msi_ext_dest_id",
    "hc_map_gpa_range",
    "migration_control",
    "bit18",
    "bit19",
    "bit20",
    "bit21",
    "bit22",
    "bit23",
    "clocksource_stable_bit",
    "bit25",
    "bit26",
    "bit27",
    "bit28",
    "bit29",
    "bit30",
    "bit31",
];

/// KVM's paravirtual feature bitmap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PvFeatures(pub u32);

impl PvFeatures {
    /// Whether feature bit `bit` (a `KVM_FEATURE_*` constant) is set.
    pub fn has(&self, bit: u32) -> bool {
        bit < 32 && self.0 & (1 << bit) != 0
    }

    /// The names of the set bits, lowest bit first.
    pub fn iter_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        (0..32u32)
            .filter(|&b| self.has(b))
            .map(|b| PV_FEATURE_NAMES[b as usize])
    }
}

/// What [`detect`] found out about the CPU and the hypervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    pub hypervisor: Hypervisor,
    /// The CPUID base where the hypervisor's leaves were found (0x40000000
    /// or 0x40000100); 0 without a hypervisor.
    pub hv_base: u32,
    /// The highest leaf of that range (its EAX); 0 without a hypervisor.
    pub max_hv_leaf: u32,
    /// KVM's feature bitmap; `None` unless the hypervisor is KVM.
    pub pv_features: Option<PvFeatures>,
    /// The brand string from CPUID 0x80000002..4, trimmed; empty when the
    /// CPU has no brand string.
    pub cpu_model: heapless::String<48>,
    pub has_x2apic: bool,
    pub has_invariant_tsc: bool,
    pub has_pcid: bool,
    pub has_invpcid: bool,
    pub has_pdpe1gb: bool,
    pub has_nx: bool,
}

fn signature(regs: [u32; 4]) -> [u8; 12] {
    let mut sig = [0u8; 12];
    sig[0..4].copy_from_slice(&regs[1].to_le_bytes());
    sig[4..8].copy_from_slice(&regs[2].to_le_bytes());
    sig[8..12].copy_from_slice(&regs[3].to_le_bytes());
    sig
}

/// Finds the hypervisor and the base of its leaves. KVM wins wherever it
/// sits (a KVM guest with Hyper-V enlightenments shows "Microsoft Hv" at the
/// base and KVM 0x100 above it), then Xen, which moves the same way; anything
/// else is taken from the base.
fn find_hypervisor(c: &impl Cpuid) -> (Hypervisor, u32, u32) {
    if c.cpuid(1, 0)[2] & CPUID_1_ECX_HYPERVISOR == 0 {
        return (Hypervisor::None, 0, 0);
    }
    let bases = [
        HYPERVISOR_CPUID_BASE,
        HYPERVISOR_CPUID_BASE + HYPERVISOR_CPUID_STRIDE,
    ];
    let probe = |base: u32| {
        let regs = c.cpuid(base, 0);
        (Hypervisor::from_signature(&signature(regs)), regs[0])
    };
    for wanted in [Hypervisor::Kvm, Hypervisor::Xen] {
        for base in bases {
            let (hv, max) = probe(base);
            if hv == wanted {
                // cpuid.rst: KVM used to report EAX = 0, meaning
                // "KVM_CPUID_FEATURES is the highest leaf".
                let max = if hv == Hypervisor::Kvm && max == 0 {
                    base + 1
                } else {
                    max
                };
                return (hv, base, max);
            }
        }
    }
    let (hv, max) = probe(HYPERVISOR_CPUID_BASE);
    (hv, HYPERVISOR_CPUID_BASE, max)
}

/// The brand string, or an empty string when CPUID has none. Bytes that are
/// not printable ASCII become `?` so the result is safe to print anywhere.
fn brand_string(c: &impl Cpuid, max_ext: u32) -> heapless::String<48> {
    let mut out = heapless::String::new();
    if max_ext < 0x8000_0004 {
        return out;
    }
    let mut raw = [0u8; 48];
    for (i, leaf) in (0x8000_0002..=0x8000_0004u32).enumerate() {
        for (j, reg) in c.cpuid(leaf, 0).iter().enumerate() {
            let at = i * 16 + j * 4;
            raw[at..at + 4].copy_from_slice(&reg.to_le_bytes());
        }
    }
    let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let text = &raw[..len];
    let start = text.iter().position(|&b| b != b' ').unwrap_or(text.len());
    let end = text
        .iter()
        .rposition(|&b| b != b' ')
        .map_or(start, |p| p + 1);
    for &b in &text[start..end] {
        let ch = if b.is_ascii_graphic() || b == b' ' {
            b as char
        } else {
            '?'
        };
        // Cannot overflow: at most 48 one-byte characters.
        let _ = out.push(ch);
    }
    out
}

/// Reads everything the kernel reports about its host.
pub fn detect(c: &impl Cpuid) -> HostInfo {
    let max_basic = c.cpuid(0, 0)[0];
    let leaf1 = c.cpuid(1, 0);
    // Intel returns the highest basic leaf's data for out-of-range leaves,
    // so every leaf is read only after its range's maximum says it exists.
    let leaf7_ebx = if max_basic >= 7 { c.cpuid(7, 0)[1] } else { 0 };
    let max_ext = c.cpuid(0x8000_0000, 0)[0];
    let ext1_edx = if max_ext >= 0x8000_0001 {
        c.cpuid(0x8000_0001, 0)[3]
    } else {
        0
    };
    let ext7_edx = if max_ext >= 0x8000_0007 {
        c.cpuid(0x8000_0007, 0)[3]
    } else {
        0
    };

    let (hypervisor, hv_base, max_hv_leaf) = find_hypervisor(c);
    let pv_features = (hypervisor == Hypervisor::Kvm
        && max_hv_leaf >= hv_base + (KVM_CPUID_FEATURES - KVM_CPUID_SIGNATURE))
        .then(|| PvFeatures(c.cpuid(hv_base + (KVM_CPUID_FEATURES - KVM_CPUID_SIGNATURE), 0)[0]));

    HostInfo {
        hypervisor,
        hv_base,
        max_hv_leaf,
        pv_features,
        cpu_model: brand_string(c, max_ext),
        has_x2apic: leaf1[2] & CPUID_1_ECX_X2APIC != 0,
        has_invariant_tsc: ext7_edx & CPUID_80000007_EDX_INVARIANT_TSC != 0,
        has_pcid: leaf1[2] & CPUID_1_ECX_PCID != 0,
        has_invpcid: leaf7_ebx & CPUID_7_EBX_INVPCID != 0,
        has_pdpe1gb: ext1_edx & CPUID_80000001_EDX_PDPE1GB != 0,
        has_nx: ext1_edx & CPUID_80000001_EDX_NX != 0,
    }
}

/// Where a TSC frequency came from, most trustworthy first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TscSource {
    Cpuid15h,
    Cpuid16h,
    HypervisorLeaf,
    Kvmclock,
    PmTimer,
    Pit,
    /// A fixed guess, when nothing could be measured.
    Assumed,
}

impl TscSource {
    /// The name used in `HB` records.
    pub fn name(&self) -> &'static str {
        match self {
            TscSource::Cpuid15h => "cpuid_15h",
            TscSource::Cpuid16h => "cpuid_16h",
            TscSource::HypervisorLeaf => "hypervisor_leaf",
            TscSource::Kvmclock => "kvmclock",
            TscSource::PmTimer => "pm_timer",
            TscSource::Pit => "pit",
            TscSource::Assumed => "assumed",
        }
    }
}

/// What one TSC tick is. Under QEMU's `-icount shift=0` the guest TSC
/// advances by exactly one per guest instruction (every vCPU's, in
/// single-threaded TCG), so figures become instruction counts: exact and
/// the same on every boot, but not time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TscUnit {
    Cycles,
    Instructions,
}

impl TscUnit {
    /// The name used in `HB` records (`"unit"`).
    pub fn name(self) -> &'static str {
        match self {
            TscUnit::Cycles => "cycles",
            TscUnit::Instructions => "instructions",
        }
    }
}

/// Instructions the kernel's check runs between its two TSC reads: a block
/// of this many `nop`s (tsc.rs), plus the few instructions around it.
pub const ICOUNT_CHECK_NOPS: u64 = 1000;
/// The instructions around the block that icount may count with it: the
/// moves that save the first reading and the second `rdtsc`.
pub const ICOUNT_CHECK_SLACK: u64 = 8;

/// True when TSC deltas read across [`ICOUNT_CHECK_NOPS`] straight-line
/// instructions say the TSC counts instructions: every reading the same and
/// within the slack. A cycle-counting TSC varies between readings, and
/// lands in that narrow window only by chance, so three readings are taken.
pub fn tsc_counts_instructions(deltas: &[u64]) -> bool {
    let lo = ICOUNT_CHECK_NOPS;
    let hi = ICOUNT_CHECK_NOPS + ICOUNT_CHECK_SLACK;
    !deltas.is_empty() && deltas.iter().all(|&d| d == deltas[0]) && (lo..=hi).contains(&deltas[0])
}

impl fmt::Display for TscSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// TSC Hz from CPUID 0x15 (Intel SDM vol. 2A, "Time Stamp Counter and
/// Nominal Core Crystal Clock Information Leaf"): TSC = crystal * EBX / EAX.
/// Needs all three values; when ECX (the crystal) is 0 the SDM points at
/// model-specific tables or leaf 0x16, neither of which is reliable in a
/// guest, so that case is `None` and the caller moves on to leaf 0x16.
pub fn from_leaf_15h(eax: u32, ebx: u32, ecx: u32) -> Option<u64> {
    if eax == 0 || ebx == 0 || ecx == 0 {
        return None;
    }
    Some(u64::from(ecx) * u64::from(ebx) / u64::from(eax))
}

/// TSC Hz from CPUID 0x16 EAX bits 15:0, the processor base frequency in MHz
/// (Intel SDM vol. 2A, "Processor Frequency Information Leaf"). On most
/// Intel parts the TSC runs at the base frequency; it is an approximation.
pub fn from_leaf_16h(eax: u32) -> Option<u64> {
    let mhz = u64::from(eax & 0xffff);
    (mhz != 0).then_some(mhz * 1_000_000)
}

/// TSC Hz from the hypervisor timing leaf [`HV_TIMING_LEAF`] EAX (TSC kHz).
/// Only meaningful when the hypervisor's maximum leaf reaches it;
/// [`tsc_from_cpuid`] checks that.
pub fn from_hv_timing_leaf(eax: u32) -> Option<u64> {
    (eax != 0).then_some(u64::from(eax) * 1000)
}

/// TSC Hz from kvmclock's `pvclock_vcpu_time_info` scale (msr.rst):
/// `ns = ((tsc << shift) * mul) >> 32`, with a right shift by `-shift` when
/// `shift` is negative. Solving for one second of nanoseconds gives
/// `Hz = 10^9 * 2^32 / mul / 2^shift`; the result is truncated, like
/// Linux's `pvclock_tsc_khz`. `None` for a zero multiplier, a shift outside
/// what a 64-bit TSC allows, or a result that does not fit.
pub fn from_pvclock(tsc_to_system_mul: u32, tsc_shift: i8) -> Option<u64> {
    if tsc_to_system_mul == 0 || !(-32..=32).contains(&tsc_shift) {
        return None;
    }
    let mut num: u128 = 1_000_000_000u128 << 32;
    let mut den: u128 = u128::from(tsc_to_system_mul);
    if tsc_shift >= 0 {
        den <<= tsc_shift;
    } else {
        num <<= -tsc_shift;
    }
    let hz = u64::try_from(num / den).ok()?;
    (hz != 0).then_some(hz)
}

/// TSC Hz from a measurement against the ACPI PM timer: `tsc_delta` TSC
/// ticks elapsed while the PM timer advanced `pm_ticks` at
/// [`ACPI_PM_TIMER_HZ`].
pub fn from_pm_timer(tsc_delta: u64, pm_ticks: u64) -> Option<u64> {
    if pm_ticks == 0 {
        return None;
    }
    let hz = u128::from(tsc_delta) * u128::from(ACPI_PM_TIMER_HZ) / u128::from(pm_ticks);
    u64::try_from(hz).ok().filter(|&hz| hz != 0)
}

/// The TSC frequency CPUID states outright, if any: the hypervisor timing
/// leaf (a hypervisor that offers it knows the host's TSC rate), then leaf
/// 0x15, then leaf 0x16. Each is read only when its range's maximum leaf
/// includes it.
pub fn tsc_from_cpuid(c: &impl Cpuid) -> Option<(u64, TscSource)> {
    if c.cpuid(1, 0)[2] & CPUID_1_ECX_HYPERVISOR != 0
        && c.cpuid(HYPERVISOR_CPUID_BASE, 0)[0] >= HV_TIMING_LEAF
    {
        if let Some(hz) = from_hv_timing_leaf(c.cpuid(HV_TIMING_LEAF, 0)[0]) {
            return Some((hz, TscSource::HypervisorLeaf));
        }
    }
    let max_basic = c.cpuid(0, 0)[0];
    if max_basic >= 0x15 {
        let [eax, ebx, ecx, _] = c.cpuid(0x15, 0);
        if let Some(hz) = from_leaf_15h(eax, ebx, ecx) {
            return Some((hz, TscSource::Cpuid15h));
        }
    }
    if max_basic >= 0x16 {
        if let Some(hz) = from_leaf_16h(c.cpuid(0x16, 0)[0]) {
            return Some((hz, TscSource::Cpuid16h));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icount_check_needs_equal_readings_in_the_window() {
        assert!(tsc_counts_instructions(&[1002, 1002, 1002]));
        assert!(
            !tsc_counts_instructions(&[1002, 1003, 1002]),
            "a cycle counter wobbles"
        );
        assert!(
            !tsc_counts_instructions(&[350, 350, 350]),
            "too few ticks for the block"
        );
        assert!(
            !tsc_counts_instructions(&[1100, 1100, 1100]),
            "outside the slack"
        );
        assert!(!tsc_counts_instructions(&[]));
    }
    use std::collections::HashMap;

    /// A CPUID table. Leaves not listed return zeros, as leaves above a
    /// range's maximum do on AMD.
    #[derive(Default)]
    struct Table(HashMap<(u32, u32), [u32; 4]>);

    impl Table {
        fn set(mut self, leaf: u32, regs: [u32; 4]) -> Self {
            self.0.insert((leaf, 0), regs);
            self
        }
        fn with_signature(self, leaf: u32, max: u32, sig: &[u8; 12]) -> Self {
            let word = |i: usize| u32::from_le_bytes(sig[i..i + 4].try_into().unwrap());
            self.set(leaf, [max, word(0), word(4), word(8)])
        }
        fn with_brand(mut self, brand: &str) -> Self {
            let mut bytes = [0u8; 48];
            bytes[..brand.len()].copy_from_slice(brand.as_bytes());
            for i in 0..3 {
                let mut regs = [0u32; 4];
                for (j, r) in regs.iter_mut().enumerate() {
                    let at = i * 16 + j * 4;
                    *r = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
                }
                self = self.set(0x8000_0002 + i as u32, regs);
            }
            self
        }
    }

    impl Cpuid for Table {
        fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
            self.0.get(&(leaf, subleaf)).copied().unwrap_or([0; 4])
        }
    }

    const ECX_HV: u32 = CPUID_1_ECX_HYPERVISOR;

    /// Roughly what QEMU 7.2 `-accel tcg -cpu max` shows.
    fn qemu_tcg() -> Table {
        Table::default()
            .set(0, [0xd, 0, 0, 0])
            .set(
                1,
                [
                    0x000806f8,
                    0,
                    ECX_HV | CPUID_1_ECX_X2APIC | CPUID_1_ECX_PCID,
                    0,
                ],
            )
            .set(7, [0, CPUID_7_EBX_INVPCID, 0, 0])
            .set(0x8000_0000, [0x8000_0008, 0, 0, 0])
            .set(
                0x8000_0001,
                [0, 0, 0, CPUID_80000001_EDX_NX | CPUID_80000001_EDX_PDPE1GB],
            )
            .with_brand("QEMU TCG CPU version 2.5+")
            .with_signature(0x4000_0000, 0x4000_0001, b"TCGTCGTCGTCG")
    }

    /// A KVM guest with kvmclock, PV TLB flush, PV IPIs and the timing leaf.
    fn kvm() -> Table {
        let features = (1 << KVM_FEATURE_CLOCKSOURCE)
            | (1 << KVM_FEATURE_CLOCKSOURCE2)
            | (1 << KVM_FEATURE_PV_TLB_FLUSH)
            | (1 << KVM_FEATURE_PV_SEND_IPI)
            | (1 << KVM_FEATURE_CLOCKSOURCE_STABLE_BIT);
        Table::default()
            .set(0, [0x16, 0, 0, 0])
            .set(1, [0, 0, ECX_HV | CPUID_1_ECX_X2APIC, 0])
            .set(0x8000_0000, [0x8000_0008, 0, 0, 0])
            .set(0x8000_0007, [0, 0, 0, CPUID_80000007_EDX_INVARIANT_TSC])
            .with_brand("       Intel(R) Xeon(R) CPU @ 2.60GHz  ")
            .with_signature(0x4000_0000, 0x4000_0010, b"KVMKVMKVM\0\0\0")
            .set(0x4000_0001, [features, 0, 0, 0])
            .set(0x4000_0010, [2_600_000, 1_000_000, 0, 0])
            .set(0x15, [2, 216, 24_000_000, 0])
            .set(0x16, [2600, 3500, 100, 0])
    }

    #[test]
    fn qemu_tcg_is_recognised() {
        let info = detect(&qemu_tcg());
        assert_eq!(info.hypervisor, Hypervisor::Tcg);
        assert_eq!(info.hypervisor.name(), "tcg");
        assert_eq!(info.hv_base, 0x4000_0000);
        assert_eq!(info.pv_features, None);
        assert_eq!(info.cpu_model.as_str(), "QEMU TCG CPU version 2.5+");
        assert!(info.has_x2apic && info.has_pcid && info.has_invpcid);
        assert!(info.has_nx && info.has_pdpe1gb);
        assert!(!info.has_invariant_tsc);
        // No timing leaf, no leaf 0x15/0x16 below max basic 0xd.
        assert_eq!(tsc_from_cpuid(&qemu_tcg()), None);
    }

    #[test]
    fn kvm_features_are_decoded_by_name() {
        let info = detect(&kvm());
        assert_eq!(info.hypervisor, Hypervisor::Kvm);
        assert_eq!(info.max_hv_leaf, 0x4000_0010);
        let pv = info.pv_features.expect("KVM has a feature leaf");
        assert!(pv.has(KVM_FEATURE_PV_TLB_FLUSH));
        assert!(!pv.has(KVM_FEATURE_PV_EOI));
        assert!(!pv.has(40));
        let names: Vec<_> = pv.iter_names().collect();
        assert_eq!(
            names,
            [
                "clocksource",
                "clocksource2",
                "pv_tlb_flush",
                "pv_send_ipi",
                "clocksource_stable_bit"
            ]
        );
        assert_eq!(info.cpu_model.as_str(), "Intel(R) Xeon(R) CPU @ 2.60GHz");
        assert!(info.has_invariant_tsc);
        // The timing leaf wins over 0x15 and 0x16.
        assert_eq!(
            tsc_from_cpuid(&kvm()),
            Some((2_600_000_000, TscSource::HypervisorLeaf))
        );
    }

    #[test]
    fn every_feature_bit_has_a_name_and_unknown_bits_are_numbered() {
        let all: Vec<_> = PvFeatures(u32::MAX).iter_names().collect();
        assert_eq!(all.len(), 32);
        assert_eq!(all[8], "bit8");
        assert_eq!(all[17], "migration_control");
        assert_eq!(all[31], "bit31");
        let mut unique = all.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 32, "duplicate names");
        assert_eq!(PvFeatures(0).iter_names().count(), 0);
    }

    #[test]
    fn old_kvm_with_zero_max_leaf_still_has_features() {
        let t = Table::default()
            .set(1, [0, 0, ECX_HV, 0])
            .with_signature(0x4000_0000, 0, b"KVMKVMKVM\0\0\0")
            .set(0x4000_0001, [1, 0, 0, 0]);
        let info = detect(&t);
        assert_eq!(info.max_hv_leaf, 0x4000_0001);
        assert_eq!(info.pv_features, Some(PvFeatures(1)));
    }

    #[test]
    fn bare_metal_ignores_the_hypervisor_range() {
        // Without the hypervisor bit, leaf 0x40000000 is garbage (Intel
        // repeats the highest basic leaf); put a KVM signature there to
        // prove it is not read.
        let t = Table::default()
            .set(0, [0x16, 0, 0, 0])
            .set(1, [0, 0, CPUID_1_ECX_X2APIC, 0])
            .with_signature(0x4000_0000, 0x4000_0010, b"KVMKVMKVM\0\0\0")
            .set(0x4000_0010, [1_000_000, 0, 0, 0])
            .set(0x15, [2, 176, 24_000_000, 0]);
        let info = detect(&t);
        assert_eq!(info.hypervisor, Hypervisor::None);
        assert_eq!(info.hypervisor.name(), "none");
        assert_eq!(
            (info.hv_base, info.max_hv_leaf, info.pv_features),
            (0, 0, None)
        );
        assert_eq!(info.cpu_model.as_str(), "", "no extended leaves, no brand");
        assert_eq!(
            tsc_from_cpuid(&t),
            Some((2_112_000_000, TscSource::Cpuid15h))
        );
    }

    #[test]
    fn kvm_behind_hyperv_enlightenments_is_preferred() {
        let t = Table::default()
            .set(1, [0, 0, ECX_HV, 0])
            .with_signature(0x4000_0000, 0x4000_000b, b"Microsoft Hv")
            .with_signature(0x4000_0100, 0x4000_0101, b"KVMKVMKVM\0\0\0")
            .set(0x4000_0101, [1 << KVM_FEATURE_PV_SEND_IPI, 0, 0, 0])
            // Hyper-V's own leaf 0x40000001 must not be taken for KVM's.
            .set(0x4000_0001, [0x31237648, 0, 0, 0]);
        let info = detect(&t);
        assert_eq!(info.hypervisor, Hypervisor::Kvm);
        assert_eq!(info.hv_base, 0x4000_0100);
        assert_eq!(info.max_hv_leaf, 0x4000_0101);
        assert_eq!(
            info.pv_features,
            Some(PvFeatures(1 << KVM_FEATURE_PV_SEND_IPI))
        );
    }

    #[test]
    fn plain_hyperv_and_unknown_signatures() {
        let t = Table::default().set(1, [0, 0, ECX_HV, 0]).with_signature(
            0x4000_0000,
            0x4000_000b,
            b"Microsoft Hv",
        );
        assert_eq!(detect(&t).hypervisor, Hypervisor::HyperV);

        let t = Table::default().set(1, [0, 0, ECX_HV, 0]).with_signature(
            0x4000_0000,
            0x4000_0001,
            b"ACRN\x01CRNACRN",
        );
        let hv = detect(&t).hypervisor;
        assert_eq!(hv, Hypervisor::Other(*b"ACRN\x01CRNACRN"));
        assert_eq!(hv.name(), "other");
        assert_eq!(hv.to_string(), "other:ACRN?CRNACRN");
        assert_eq!(Hypervisor::Bhyve.to_string(), "bhyve");
    }

    #[test]
    fn timing_leaf_is_ignored_when_max_leaf_is_below_it() {
        let t = Table::default()
            .set(0, [0x16, 0, 0, 0])
            .set(1, [0, 0, ECX_HV, 0])
            .with_signature(0x4000_0000, 0x4000_0001, b"KVMKVMKVM\0\0\0")
            .set(0x4000_0010, [1_000_000, 0, 0, 0])
            .set(0x15, [2, 216, 0, 0]) // no crystal: 0x15 unusable
            .set(0x16, [2600, 0, 0, 0]);
        assert_eq!(
            tsc_from_cpuid(&t),
            Some((2_600_000_000, TscSource::Cpuid16h))
        );
    }

    #[test]
    fn closures_are_cpuid_sources() {
        let c = |leaf: u32, _sub: u32| if leaf == 1 { [0, 0, 0, 0] } else { [0; 4] };
        assert_eq!(detect(&c).hypervisor, Hypervisor::None);
    }

    #[test]
    fn leaf_15h_and_16h() {
        assert_eq!(from_leaf_15h(2, 216, 24_000_000), Some(2_592_000_000));
        assert_eq!(from_leaf_15h(0, 216, 24_000_000), None);
        assert_eq!(from_leaf_15h(2, 0, 24_000_000), None);
        assert_eq!(from_leaf_15h(2, 216, 0), None);
        // No overflow at the extremes.
        assert_eq!(
            from_leaf_15h(1, u32::MAX, u32::MAX),
            Some(u64::from(u32::MAX).pow(2))
        );
        assert_eq!(from_leaf_16h(2600), Some(2_600_000_000));
        assert_eq!(
            from_leaf_16h(0xffff_0000),
            None,
            "only bits 15:0 hold the MHz"
        );
        assert_eq!(from_hv_timing_leaf(2_600_000), Some(2_600_000_000));
        assert_eq!(from_hv_timing_leaf(0), None);
    }

    /// The host side that produces (mul, shift), after Linux's
    /// `kvm_get_time_scale(NSEC_PER_SEC, tsc_hz)`: halve the TSC rate until it
    /// fits in 32 bits and is at most twice 1e9, then double it (or halve
    /// the target) until it exceeds the target, so that mul = target/rate
    /// as a 0.32 fraction lands in [2^31, 2^32).
    fn host_time_scale(tsc_hz: u64) -> (u32, i8) {
        let mut target: u64 = 1_000_000_000;
        let mut rate = tsc_hz;
        let mut shift: i8 = 0;
        while rate > target * 2 || rate >> 32 != 0 {
            rate >>= 1;
            shift -= 1;
        }
        while rate <= target || target >> 32 != 0 {
            if target >> 32 != 0 || rate & 0x8000_0000 != 0 {
                target >>= 1;
            } else {
                rate <<= 1;
            }
            shift += 1;
        }
        (((target << 32) / rate) as u32, shift)
    }

    #[test]
    fn pvclock_known_pairs() {
        // 1 GHz: one tick is one ns, so mul * 2^shift = 2^32.
        assert_eq!(from_pvclock(0x8000_0000, 1), Some(1_000_000_000));
        // 2 GHz: half a ns per tick.
        assert_eq!(from_pvclock(0x8000_0000, 0), Some(2_000_000_000));
        // 3 GHz: mul = floor(2^33 / 3), shift -1; truncation lands exactly.
        assert_eq!(from_pvclock(2_863_311_530, -1), Some(3_000_000_000));
        assert_eq!(from_pvclock(0, 0), None);
        assert_eq!(from_pvclock(1, 40), None);
        assert_eq!(from_pvclock(1, -40), None);
    }

    #[test]
    fn pvclock_inverts_the_hosts_scale() {
        for hz in [
            1_000_000_000u64,
            2_592_000_000,
            2_600_000_000,
            3_700_000_123,
            100_000_000,
        ] {
            let (mul, shift) = host_time_scale(hz);
            assert!(mul >= 0x8000_0000, "{hz}: mul {mul:#x} not normalised");
            let got = from_pvclock(mul, shift).unwrap();
            let err = got.abs_diff(hz) as f64 / hz as f64;
            assert!(err < 1e-8, "{hz} Hz -> ({mul:#x}, {shift}) -> {got} Hz");
        }
    }

    #[test]
    fn pm_timer_calibration() {
        // 10 ms of PM timer at 2.6 GHz.
        let pm_ticks = ACPI_PM_TIMER_HZ / 100;
        let tsc = 2_600_000_000 * pm_ticks / ACPI_PM_TIMER_HZ;
        let hz = from_pm_timer(tsc, pm_ticks).unwrap();
        assert!(hz.abs_diff(2_600_000_000) < 1_000, "{hz}");
        assert_eq!(from_pm_timer(1, 0), None);
        assert_eq!(from_pm_timer(0, 10), None);
        assert_eq!(from_pm_timer(u64::MAX, 1), None, "does not fit in u64");
    }

    #[test]
    fn tsc_source_names() {
        let all = [
            TscSource::Cpuid15h,
            TscSource::Cpuid16h,
            TscSource::HypervisorLeaf,
            TscSource::Kvmclock,
            TscSource::PmTimer,
            TscSource::Pit,
            TscSource::Assumed,
        ];
        let names: Vec<_> = all.iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            [
                "cpuid_15h",
                "cpuid_16h",
                "hypervisor_leaf",
                "kvmclock",
                "pm_timer",
                "pit",
                "assumed"
            ]
        );
    }
}

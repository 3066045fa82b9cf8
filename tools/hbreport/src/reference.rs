//! Published costs of the privileged operations the queue counts, on
//! hypervisors this project cannot run here. The projection (projection.rs)
//! multiplies the counted operations by these figures.
//!
//! Everything quoted lives in [`REFERENCE_COSTS`], one row per platform and
//! operation, each with what the number measures and where it was
//! published. A platform with no published figure for an operation says so
//! (`Cycles::Unknown`) rather than carrying an invented number, and a figure
//! that only bounds the cost from below is marked `AtLeast`, which the
//! report prints as "≥".
//!
//! Which operations exit where:
//! - KVM with EPT/NPT: the guest owns its page tables; PTE stores, `invlpg`
//!   and CR3 loads run natively. IPIs still exit (the ICR write), unless the
//!   CPU has IPI virtualization.
//! - KVM with shadow paging (`ept=0`, or a host without EPT): KVM
//!   write-protects the guest's page tables, so every PTE store to them
//!   faults and is emulated; `invlpg` and CR3 loads exit so KVM can keep its
//!   shadow tables in step.
//! - Nested (a guest of a guest hypervisor, KVM on KVM): every exit of the
//!   inner guest goes to L0 first, which reflects it to L1, whose handler
//!   itself exits to L0 on its VMREADs, VMWRITEs and VMRESUME. One L2 exit
//!   therefore costs many L1 exits. With EPT on EPT (L0 shadows L1's EPT)
//!   the inner guest's page-table work still runs natively; when L1 uses
//!   shadow paging for L2 (no nested EPT, as on this project's development
//!   hosts), every PTE store, `invlpg` and CR3 load pays the nested exit.

use std::fmt;

/// The privileged operations the queue counts (kernel `queue::Counters`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A store to page-table memory (`pte_writes`).
    PteWrite,
    /// One `invlpg` (`invlpg`).
    Invlpg,
    /// A full TLB flush by CR3 reload (`full_flushes`).
    Cr3Reload,
    /// A control-register write other than a flush (`cr_writes`).
    CrWrite,
    /// One IPI sent (`ipis`).
    Ipi,
}

impl Op {
    pub const ALL: [Op; 5] = [
        Op::PteWrite,
        Op::Invlpg,
        Op::Cr3Reload,
        Op::CrWrite,
        Op::Ipi,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Op::PteWrite => "PTE write",
            Op::Invlpg => "invlpg",
            Op::Cr3Reload => "CR3 reload",
            Op::CrWrite => "CR write",
            Op::Ipi => "IPI",
        }
    }

    /// The `exits` suite figure that measures this operation in this run.
    /// A CR write is measured by the CR3 reload (the suite has no separate
    /// figure; both are one `mov` to a control register).
    pub fn exit_names(self) -> &'static [&'static str] {
        match self {
            Op::PteWrite => &["pte_write"],
            Op::Invlpg => &["invlpg"],
            Op::Cr3Reload | Op::CrWrite => &["cr3_reload"],
            Op::Ipi => &["ipi_roundtrip", "self_ipi"],
        }
    }
}

/// A reference platform: one column of the projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    KvmEpt,
    KvmShadow,
    NestedEpt,
    NestedShadow,
}

impl Platform {
    pub const ALL: [Platform; 4] = [
        Platform::KvmEpt,
        Platform::KvmShadow,
        Platform::NestedEpt,
        Platform::NestedShadow,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Platform::KvmEpt => "KVM, EPT/NPT",
            Platform::KvmShadow => "KVM, shadow paging",
            Platform::NestedEpt => "nested KVM, EPT on EPT",
            Platform::NestedShadow => "nested KVM, L1 shadow paging",
        }
    }
}

/// A cost in cycles, or why there is none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cycles {
    /// The operation does not leave the guest: it costs what it costs on
    /// bare metal, which the projection leaves out (it counts transitions).
    NoExit,
    Exactly(u32),
    /// A lower bound: the real cost is this plus handling no one published.
    AtLeast(u32),
    /// No published figure was found.
    Unknown,
}

impl fmt::Display for Cycles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cycles::NoExit => write!(f, "0 (no exit)"),
            Cycles::Exactly(c) => write!(f, "{}", crate::report::thousands(f64::from(*c))),
            Cycles::AtLeast(c) => write!(f, "≥ {}", crate::report::thousands(f64::from(*c))),
            Cycles::Unknown => write!(f, "unknown"),
        }
    }
}

/// One row of the reference table.
#[derive(Debug, Clone, Copy)]
pub struct RefCost {
    pub platform: Platform,
    pub op: Op,
    pub cycles: Cycles,
    /// What the number measures, and on what.
    pub measures: &'static str,
    /// Where it was published.
    pub source: &'static str,
}

// The sources, each cited by the rows that use it.

const SRC_VMX_EPT_NO_EXIT: &str = "Linux arch/x86/kvm/vmx/vmx.c (setup_vmcs_config, later vmx_exec_control): \
     \"CR3 accesses and invlpg don't need to cause VM Exits when EPT enabled\"; Intel Xeon E5-2600 v2 \
     datasheet vol. 1 §3.1.2: EPT \"eliminates VM exits from guest OS to the VMM for shadow page-table \
     maintenance\"";

const SRC_CPUID_EXIT: &str =
    "kvm-unit-tests x86/vmexit.flat `cpuid`: \"the average latency for a CPUID exit \
     goes from 1018 => 1027 cycles\" (1 vCPU pinned), Sean Christopherson, kvm@vger.kernel.org, \
     \"Re: [PATCH v2] KVM: x86: Drop the kvm_has_noapic_vcpu optimization\", Dec 2024";

const SRC_IPI: &str = "kvm-unit-tests x86/vmexit.flat `ipi` (send an IPI to another vCPU, wait for its ack) \
     on a Skylake server: 4238 cycles, 3293 with KVM's single-target IPI fastpath; Wanpeng Li, \
     \"[PATCH v2] KVM: X86: Ultra fast single target IPI fastpath\", kvm@vger.kernel.org, 10 Apr 2020";

const SRC_SHADOW_MMU: &str = "Linux Documentation/virt/kvm/x86/mmu.rst (\"The x86 kvm shadow mmu\"): shadowed \
     guest page tables are write-protected and guest writes to them are emulated; the bound is the \
     bare CPUID exit of kvm-unit-tests vmexit.flat (1,018 cycles, Sean Christopherson, kvm@vger.kernel.org, \
     Dec 2024). No per-operation figure for shadow-paging exits was found";

const SRC_NESTED: &str =
    "kvm-unit-tests x86/vmexit.flat run as a nested (L2) guest, after Sean Christopherson's nVMX \
     optimization series: cpuid 13142, vmcall 13189, self_ipi_tpr 15003 cycles; Paolo Bonzini, \
     \"[PATCH 00/43] VMX optimizations\", kvm@vger.kernel.org";

const SRC_NESTED_EPT: &str = "Ben-Yehuda et al., \"The Turtles Project: Design and Implementation of Nested \
     Virtualization\", OSDI 2010 (multi-dimensional paging: L0 compresses L1's and L2's translations \
     onto the hardware's two levels, so L2's page-table updates need no exit); Linux \
     Documentation/virt/kvm/x86/mmu.rst (nested guest translation ngva->ngpa->gpa->hpa)";

/// The reference costs. One place: edit here, and the report's table and
/// the projection follow.
pub const REFERENCE_COSTS: &[RefCost] = &[
    // --- KVM with EPT/NPT ---
    RefCost {
        platform: Platform::KvmEpt,
        op: Op::PteWrite,
        cycles: Cycles::NoExit,
        measures: "a store to the guest's own page table",
        source: SRC_VMX_EPT_NO_EXIT,
    },
    RefCost {
        platform: Platform::KvmEpt,
        op: Op::Invlpg,
        cycles: Cycles::NoExit,
        measures: "INVLPG exiting is off under EPT",
        source: SRC_VMX_EPT_NO_EXIT,
    },
    RefCost {
        platform: Platform::KvmEpt,
        op: Op::Cr3Reload,
        cycles: Cycles::NoExit,
        measures: "CR3-load exiting is off under EPT",
        source: SRC_VMX_EPT_NO_EXIT,
    },
    RefCost {
        platform: Platform::KvmEpt,
        op: Op::CrWrite,
        cycles: Cycles::AtLeast(1018),
        measures:
            "CR0/CR4 writes to host-owned bits exit (Intel SDM vol. 3C, guest/host masks and read \
                   shadows for CR0 and CR4); bounded by a bare CPUID exit",
        source: SRC_CPUID_EXIT,
    },
    RefCost {
        platform: Platform::KvmEpt,
        op: Op::Ipi,
        cycles: Cycles::Exactly(3293),
        measures: "IPI to another vCPU and its acknowledgement, KVM IPI fastpath, Skylake server",
        source: SRC_IPI,
    },
    // --- KVM with shadow paging ---
    RefCost {
        platform: Platform::KvmShadow,
        op: Op::PteWrite,
        cycles: Cycles::AtLeast(1018),
        measures:
            "write-protection fault on a shadowed page table, then emulation; bounded by one exit",
        source: SRC_SHADOW_MMU,
    },
    RefCost {
        platform: Platform::KvmShadow,
        op: Op::Invlpg,
        cycles: Cycles::AtLeast(1018),
        measures: "INVLPG exit and shadow-entry sync; bounded by one exit",
        source: SRC_SHADOW_MMU,
    },
    RefCost {
        platform: Platform::KvmShadow,
        op: Op::Cr3Reload,
        cycles: Cycles::AtLeast(1018),
        measures: "CR3-load exit and shadow-root lookup; bounded by one exit",
        source: SRC_SHADOW_MMU,
    },
    RefCost {
        platform: Platform::KvmShadow,
        op: Op::CrWrite,
        cycles: Cycles::AtLeast(1018),
        measures: "control-register exit; bounded by one exit",
        source: SRC_SHADOW_MMU,
    },
    RefCost {
        platform: Platform::KvmShadow,
        op: Op::Ipi,
        cycles: Cycles::Exactly(3293),
        measures: "as under EPT: the IPI path does not depend on the MMU mode",
        source: SRC_IPI,
    },
    // --- nested, EPT on EPT ---
    RefCost {
        platform: Platform::NestedEpt,
        op: Op::PteWrite,
        cycles: Cycles::NoExit,
        measures: "L2's page tables are walked by hardware through L0's shadow of L1's EPT",
        source: SRC_NESTED_EPT,
    },
    RefCost {
        platform: Platform::NestedEpt,
        op: Op::Invlpg,
        cycles: Cycles::NoExit,
        measures: "L1 does not intercept INVLPG when it runs L2 with EPT",
        source: SRC_NESTED_EPT,
    },
    RefCost {
        platform: Platform::NestedEpt,
        op: Op::Cr3Reload,
        cycles: Cycles::NoExit,
        measures: "L1 does not intercept CR3 loads when it runs L2 with EPT",
        source: SRC_NESTED_EPT,
    },
    RefCost {
        platform: Platform::NestedEpt,
        op: Op::CrWrite,
        cycles: Cycles::AtLeast(13142),
        measures: "a nested CPUID exit bounds any exit L1 must handle",
        source: SRC_NESTED,
    },
    RefCost {
        platform: Platform::NestedEpt,
        op: Op::Ipi,
        cycles: Cycles::AtLeast(15003),
        measures: "nested self-IPI (self_ipi_tpr); an IPI to another vCPU adds the wake-up",
        source: SRC_NESTED,
    },
    // --- nested, L1 shadow paging ---
    RefCost {
        platform: Platform::NestedShadow,
        op: Op::PteWrite,
        cycles: Cycles::AtLeast(13142),
        measures: "each trapped page-table store is a nested exit; bounded by a nested CPUID exit",
        source: SRC_NESTED,
    },
    RefCost {
        platform: Platform::NestedShadow,
        op: Op::Invlpg,
        cycles: Cycles::AtLeast(13142),
        measures: "nested INVLPG exit; bounded by a nested CPUID exit",
        source: SRC_NESTED,
    },
    RefCost {
        platform: Platform::NestedShadow,
        op: Op::Cr3Reload,
        cycles: Cycles::AtLeast(13142),
        measures: "nested CR3-load exit; bounded by a nested CPUID exit",
        source: SRC_NESTED,
    },
    RefCost {
        platform: Platform::NestedShadow,
        op: Op::CrWrite,
        cycles: Cycles::AtLeast(13142),
        measures: "nested control-register exit; bounded by a nested CPUID exit",
        source: SRC_NESTED,
    },
    RefCost {
        platform: Platform::NestedShadow,
        op: Op::Ipi,
        cycles: Cycles::AtLeast(15003),
        measures: "nested self-IPI (self_ipi_tpr); an IPI to another vCPU adds the wake-up",
        source: SRC_NESTED,
    },
];

/// Published figures that frame the table but are not per-operation costs
/// of a complete exit: (figure, what it measures and where).
pub const CONTEXT: &[(&str, &str)] = &[
    (
        "about 630 cycles",
        "the hardware VM exit + VM entry round trip alone (a CPUID exit to a minimal VMX root handler, no \
         KVM), Skylake i7-6700K and Xeon Gold 6140; yulyugin/vmlatency on GitHub, results/ directory. \
         KVM's handling comes on top (the full CPUID exit above is 1,018 cycles)",
    ),
    (
        "2,000 cycles direct cost",
        "the world switch of one exit on a Xeon X5570 with KVM (Linux 2.6.34, EPT and VPID), with the \
         indirect (cache pollution) and synchronous (handling) costs \"an order of magnitude higher\" in \
         some cases; Landau, Ben-Yehuda and Gordon, \"SplitX: Split Guest/Hypervisor Execution on \
         Multi-Core\", USENIX WIOV 2011, Table 1",
    ),
    (
        "5,006 cycles",
        "a kvm-unit-tests vmexit.flat case whose control-register writes make KVM reload the MMU root \
         (through its cache of roots), under shadow paging; 4,879 with the TDP MMU and 4,875 with the legacy \
         MMU under EPT: an exit that does MMU work costs about five bare exits; Paolo Bonzini, \"[PATCH v2 18/18] KVM: x86: do not unload \
         MMU roots on all role changes\", kvm@vger.kernel.org, 17 Feb 2022",
    ),
];

/// The cost of `op` on `platform`.
pub fn cost(platform: Platform, op: Op) -> &'static RefCost {
    REFERENCE_COSTS
        .iter()
        .find(|r| r.platform == platform && r.op == op)
        // A missing row is a bug in the table above, caught by the tests.
        .unwrap_or(&UNKNOWN)
}

const UNKNOWN: RefCost = RefCost {
    platform: Platform::KvmEpt,
    op: Op::PteWrite,
    cycles: Cycles::Unknown,
    measures: "no figure",
    source: "no published figure found",
};

//! The published sources the cost model (model.rs) takes its reference
//! costs from: one row each, with a link, the CPU it was measured on and
//! the year. A reference cost names its sources by key; a test checks
//! that every key resolves and that every source has a link.
//!
//! Where a source links to a mailing-list search rather than one message,
//! the message could not be pinned down from here; the search finds the
//! thread by its subject.

/// One published source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    /// What reference costs call it by.
    pub key: &'static str,
    /// Author, title and where it appeared.
    pub cite: &'static str,
    /// The CPU the figures were measured on, or what kind of source it is
    /// when it measures nothing.
    pub cpu: &'static str,
    pub year: &'static str,
    pub link: &'static str,
}

pub const SOURCES: &[Source] = &[
    Source {
        key: "kvm-mmu",
        cite: "Linux Documentation/virt/kvm/x86/mmu.rst, \"The x86 kvm shadow mmu\": unsync shadow pages \
               (a leaf table goes out of sync on its first write; invlpg syncs an entry; a CR3 load syncs \
               every unsync table); out-of-sync shadow pages merged in Linux 2.6.27",
        cpu: "documentation (no measurement)",
        year: "2008 (unsync), document current",
        link: "https://docs.kernel.org/virt/kvm/x86/mmu.html",
    },
    Source {
        key: "sdm",
        cite: "Intel 64 and IA-32 Architectures Software Developer's Manual, vol. 3C: VM-execution controls \
               (INVLPG exiting, CR3-load exiting, CR0/CR4 guest/host masks and read shadows)",
        cpu: "architecture manual (no measurement)",
        year: "current",
        link: "https://www.intel.com/content/www/us/en/developer/articles/technical/intel-sdm.html",
    },
    Source {
        key: "apm",
        cite: "AMD64 Architecture Programmer's Manual, vol. 3 (pub. 24594): INVLPGB (broadcast TLB \
               invalidation of a page range) and TLBSYNC (wait for this CPU's broadcasts to complete)",
        cpu: "architecture manual (no measurement); the instructions arrived with Zen 3",
        year: "current",
        link: "https://www.amd.com/content/dam/amd/en/documents/processor-tech-docs/programmer-references/24594.pdf",
    },
    Source {
        key: "ept-no-exit",
        cite: "Linux arch/x86/kvm/vmx/vmx.c: with EPT, KVM clears INVLPG exiting and CR3-load/store exiting \
               (\"CR3 accesses and invlpg don't need to cause VM Exits when EPT enabled\")",
        cpu: "source code (no measurement)",
        year: "current",
        link: "https://git.kernel.org/pub/scm/linux/kernel/git/torvalds/linux.git/tree/arch/x86/kvm/vmx/vmx.c",
    },
    Source {
        key: "cpuid-exit",
        cite: "Sean Christopherson, \"Re: [PATCH v2] KVM: x86: Drop the kvm_has_noapic_vcpu optimization\", \
               kvm@vger.kernel.org: kvm-unit-tests vmexit.flat `cpuid`, one vCPU pinned, 1,018 cycles per \
               CPUID exit; \"with mitigations on ... 1600+ cycles\"",
        cpu: "not named in the message (a current Intel server, from context)",
        year: "2024",
        link: "https://lore.kernel.org/kvm/Z1nI22dBe01m3_k6@google.com/",
    },
    Source {
        key: "ipi-fastpath",
        cite: "Wanpeng Li, \"[PATCH v2] KVM: X86: Ultra fast single target IPI fastpath\", \
               kvm@vger.kernel.org: kvm-unit-tests vmexit.flat `ipi` (send to another vCPU, wait for its \
               ack), 4,238 cycles, 3,293 with the fastpath",
        cpu: "Intel Skylake server",
        year: "2020",
        link: "https://lore.kernel.org/kvm/?q=%22Ultra+fast+single+target+IPI+fastpath%22",
    },
    Source {
        key: "ipiv",
        cite: "Zeng Guang, \"[PATCH 0/5] IPI virtualization support for VM\", kvm@vger.kernel.org: the \
               kvm-unit-tests IPI round trip (send to the target vCPU until its handler completes) takes \
               22.21% (xAPIC) and 15.98% (x2APIC) fewer cycles with IPI virtualization",
        cpu: "Intel Sapphire Rapids (4th-gen Xeon Scalable, the first with IPIv)",
        year: "2021",
        link: "https://patchwork.kernel.org/comment/24319499/",
    },
    Source {
        key: "pv-send-ipi",
        cite: "Wanpeng Li, \"KVM: X86: Implement PV IPIs\" series, kvm@vger.kernel.org: one hypercall sends \
               an IPI to up to 128 vCPUs, \"one vmexit instead of one by one\"; broadcast IPIs 154% faster \
               in x2APIC physical mode (ipi microbenchmark, 80 vCPUs)",
        cpu: "Intel Xeon Skylake, 2.5 GHz, 2 sockets",
        year: "2018",
        link: "https://mail.spinics.net/lists/kvm/msg171029.html",
    },
    Source {
        key: "mmu-roots",
        cite: "Paolo Bonzini, \"[PATCH v2 18/18] KVM: x86: do not unload MMU roots on all role changes\", \
               kvm@vger.kernel.org: a vmexit.flat case whose control-register writes make KVM switch MMU \
               roots (through its root cache) costs 5,006 cycles under shadow paging, 4,879 with the TDP MMU",
        cpu: "not named in the message",
        year: "2022",
        link: "https://lore.kernel.org/kvm/?q=%22do+not+unload+MMU+roots+on+all+role+changes%22",
    },
    Source {
        key: "nested-vmexit",
        cite: "kvm-unit-tests vmexit.flat run as a nested (L2) guest, in Paolo Bonzini's \"[PATCH 00/43] \
               VMX optimizations\" cover letter, kvm@vger.kernel.org: cpuid 13,142, vmcall 13,189, \
               self_ipi_tpr 15,003 cycles",
        cpu: "not named in the message",
        year: "not verified here",
        link: "https://lore.kernel.org/kvm/?q=%22VMX+optimizations%22+vmexit",
    },
    Source {
        key: "turtles",
        cite: "Ben-Yehuda et al., \"The Turtles Project: Design and Implementation of Nested \
               Virtualization\", OSDI 2010: an L2 exit is handled by L0 and reflected to L1, whose handler \
               exits again on its VMREADs/VMWRITEs; multi-dimensional paging keeps L2's page-table updates \
               from exiting",
        cpu: "Intel Xeon (Nehalem), KVM",
        year: "2010",
        link: "https://www.usenix.org/conference/osdi10/turtles-project-design-and-implementation-nested-virtualization",
    },
    Source {
        key: "flush-ceiling",
        cite: "Dave Hansen, \"x86/mm: Set TLB flush tunable to sane value (33)\", Linux commit a5102476a24b: \
               above 33 pages one full flush replaces per-page invlpg; \"each single flush is about 100 ns\"",
        cpu: "Intel (the commit names pre-IvyBridge and IvyBridge tunings)",
        year: "2014",
        link: "https://git.kernel.org/pub/scm/linux/kernel/git/torvalds/linux.git/commit/?id=a5102476a24b",
    },
    Source {
        key: "flush-costs",
        cite: "Ingo Molnar, \"Re: [PATCH 0/3] TLB flush multiple pages per IPI v5\", linux-mm: a CR3 TLB flush \
               96 cycles, one INVLPG (__flush_tlb_one) 260 cycles; the refill after a full flush \"difficult \
               to measure\", overlapped with the cache misses",
        cpu: "not named (\"most Intel and AMD CPUs\")",
        year: "2015",
        link: "https://lore.kernel.org/linux-mm/20150608195237.GA15429@gmail.com/",
    },
    Source {
        key: "invlpgb",
        cite: "Rik van Riel, \"AMD broadcast TLB invalidation\" series, linux-mm: INVLPGB lets the kernel \
               invalidate remote TLBs without IPIs; TLB invalidation went from 40% to about 4% of CPU time \
               in will-it-scale tlb_flush2_threads (no per-instruction cost given)",
        cpu: "AMD EPYC Milan (Zen 3), 36 cores",
        year: "2024–2025",
        link: "https://mail.spinics.net/lists/linux-mm/msg417207.html",
    },
];

/// The source with this key.
pub fn get(key: &str) -> Option<&'static Source> {
    SOURCES.iter().find(|s| s.key == key)
}

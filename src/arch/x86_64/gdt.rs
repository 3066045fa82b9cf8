//! Each CPU's GDT and TSS. The TSS exists for its interrupt stack table:
//! #DF runs on a stack of its own, so a stack overflow into a guard page
//! (which faults again while pushing the #PF frame) still gets reported.

use super::percpu;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::Descriptor;
use x86_64::VirtAddr;

/// IST slot (1-based in the IDT, 0-based in the TSS) used by #DF.
pub const DOUBLE_FAULT_IST: u16 = 1;

/// Builds and loads this CPU's GDT and TSS. `df_stack_top` is the top of its
/// guarded #DF stack.
pub fn init_this_cpu(df_stack_top: VirtAddr) {
    let cpu = percpu::this();
    // SAFETY: only this CPU touches its own TSS and GDT, and it does so once,
    // before loading them; afterwards they are only read (by the CPU).
    let (tss, gdt) = unsafe { (&mut *cpu.tss.get(), &mut *cpu.gdt.get()) };
    tss.interrupt_stack_table[(DOUBLE_FAULT_IST - 1) as usize] = df_stack_top;
    let code = gdt.append(Descriptor::kernel_code_segment());
    let data = gdt.append(Descriptor::kernel_data_segment());
    // SAFETY: the TSS lives in the static per-CPU array, so the 'static
    // reference the descriptor wants is real.
    let tss_sel = gdt.append(Descriptor::tss_segment(unsafe { &*cpu.tss.get() }));
    // SAFETY: as above, the GDT is static; the selectors come from it.
    unsafe {
        (*cpu.gdt.get()).load_unsafe();
        CS::set_reg(code);
        SS::set_reg(data);
        DS::set_reg(data);
        ES::set_reg(data);
        // GS keeps its selector: reloading it would zero the per-CPU base.
        load_tss(tss_sel);
    }
}

//! Each CPU's stacks, in a region of their own with an unmapped guard page
//! below each stack, so an overflow faults instead of corrupting memory.
//!
//! CPU n's slot starts at `STACKS_BASE + n * SLOT_SIZE`:
//!
//! ```text
//! page 0            guard
//! pages 1..=56      kernel stack (224 KiB)
//! page 57           guard
//! pages 58..=61     #DF stack (16 KiB, IST1)
//! pages 62..        unmapped
//! ```
//!
//! 224 KiB, not 128: the benchmarks' `mm` suite alone takes about 103 KiB
//! of stack and its frame pool 37 KiB more when the compiler does not
//! inline it, which overflowed 128 KiB.

use crate::memory;
use x86_64::structures::paging::{Page, PageTableFlags as F, Size4KiB};
use x86_64::VirtAddr;

/// The top 512 GiB slot of the canonical address space, far from the
/// identity map and from the mm window.
const STACKS_BASE: u64 = 0xffff_ff80_0000_0000;
const PAGE: u64 = 4096;
const SLOT_PAGES: u64 = 64;
const SLOT_SIZE: u64 = SLOT_PAGES * PAGE;
const KERNEL_STACK: (u64, u64) = (1, 56); // first page, page count
const DF_STACK: (u64, u64) = (58, 4);
const _: () = assert!(DF_STACK.0 + DF_STACK.1 <= SLOT_PAGES);
const _: () = assert!(
    KERNEL_STACK.0 + KERNEL_STACK.1 < DF_STACK.0,
    "a guard page between"
);

pub struct CpuStacks {
    pub kernel_top: VirtAddr,
    pub df_top: VirtAddr,
}

fn slot(cpu: usize) -> u64 {
    STACKS_BASE + cpu as u64 * SLOT_SIZE
}

/// The stack tops of `cpu`, whether or not they are mapped yet.
pub fn tops(cpu: usize) -> CpuStacks {
    let top = |(first, count): (u64, u64)| VirtAddr::new(slot(cpu) + (first + count) * PAGE);
    CpuStacks {
        kernel_top: top(KERNEL_STACK),
        df_top: top(DF_STACK),
    }
}

/// Maps `cpu`'s stacks with fresh memory.
pub fn map_for(cpu: usize) -> Result<CpuStacks, memory::Error> {
    for (first, count) in [KERNEL_STACK, DF_STACK] {
        for i in first..first + count {
            let page = Page::<Size4KiB>::containing_address(VirtAddr::new(slot(cpu) + i * PAGE));
            memory::map_fresh_4k(page, F::PRESENT | F::WRITABLE | F::NO_EXECUTE | F::GLOBAL)?;
        }
    }
    Ok(tops(cpu))
}

/// The CPU whose guard page holds `addr`, if any.
pub fn guard_owner(addr: VirtAddr) -> Option<usize> {
    let a = addr.as_u64();
    if a < STACKS_BASE {
        return None;
    }
    let cpu = ((a - STACKS_BASE) / SLOT_SIZE) as usize;
    let page = (a - slot(cpu)) / PAGE;
    (cpu < super::percpu::MAX_CPUS && (page == KERNEL_STACK.0 - 1 || page == DF_STACK.0 - 1))
        .then_some(cpu)
}

/// Continues in `f` on the stack whose top is `top`. The current stack is
/// abandoned.
///
/// # Safety
/// `top` must be the top of a mapped, otherwise unused stack, 16-byte aligned.
pub unsafe fn switch_to(top: VirtAddr, f: extern "C" fn() -> !) -> ! {
    // SAFETY: the caller guarantees the stack; `f` never returns, so nothing
    // needs the old stack again.
    unsafe {
        core::arch::asm!(
            "mov rsp, {top}",
            "xor ebp, ebp",
            "call {f}",
            "ud2",
            top = in(reg) top.as_u64(),
            f = in(reg) f,
            options(noreturn)
        )
    }
}

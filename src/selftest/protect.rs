//! In-guest protection checks that need the mm or a probe of their own
//! (issue 5): a `map_anon` page without execute permission, W^X refused by
//! the mm API and enforced by the hardware, and a stack overflow into a
//! guard page caught on the #DF stack and resumed. The checks on the kernel
//! image (null, text, rodata, data and stack) are in selftest/mod.rs.

// See selftest/mod.rs: outcomes carry their message.
#![allow(clippy::result_large_err)]

use super::{detail, expect_pf, Detail};
use crate::arch::x86_64::interrupts::{
    probe_exec, probe_stack_overflow, probe_write, Fault, StackOverflow,
};
use crate::arch::x86_64::{percpu, power, stacks};
use crate::memory::FRAMES;
use crate::mm::{self, Protection as Prot};
use hyperbatch::mm::{Error, WINDOW_BASE};
use x86_64::VirtAddr;

type Outcome = Result<Detail, Detail>;
const PAGE: u64 = 4096;
/// The #DF stack's size (stacks.rs: 4 pages below each CPU's `df_top`).
const DF_STACK_BYTES: u64 = 4 * PAGE;
/// #PF error code bit 4: the access was an instruction fetch (Intel SDM
/// vol. 3, 4.7).
const PF_FETCH: u64 = 1 << 4;
const WRITE_AND_EXEC: Prot = Prot {
    write: true,
    exec: true,
};

/// This file's 1 GiB slices of the window, above selftest/mm.rs's.
fn region(n: u64) -> VirtAddr {
    VirtAddr::new(WINDOW_BASE + (40 + n) * (1 << 30))
}

fn fail(e: Error) -> Detail {
    detail(format_args!("{e}"))
}

/// Passes when `r` is an instruction-fetch protection fault at `addr`.
fn expect_nx(r: Result<(), Fault>, addr: u64) -> Outcome {
    match r {
        Err(f)
            if f.vector == Fault::PAGE_FAULT
                && f.addr == addr
                && f.error_code & (PF_FETCH | 1) == PF_FETCH | 1 =>
        {
            Ok(detail(format_args!("{f}")))
        }
        Err(f) => Err(detail(format_args!("wrong fault: {f}"))),
        Ok(()) => Err(detail(format_args!("executed the page at {addr:#x}"))),
    }
}

/// A `map_anon` page mapped without execute permission holds a `ret`: a call
/// there must fault. Made executable, the same call must return.
pub fn anon_not_executable() -> Outcome {
    let va = region(0);
    mm::map_anon(va, 1, Prot::READ_WRITE).map_err(fail)?;
    // SAFETY: our own page, just mapped writable; `ret` in every byte.
    let wrote = unsafe { probe_write(va, 0xc3c3_c3c3_c3c3_c3c3) };
    mm::flush();
    // SAFETY: the page holds `ret`, so even a wrongly allowed fetch returns.
    let nx = expect_nx(unsafe { probe_exec(va) }, va.as_u64());
    let protected = mm::protect(va, 1, Prot::READ_EXEC);
    mm::flush();
    // SAFETY: as above; now it must run and return.
    let ran = unsafe { probe_exec(va) };
    mm::unmap(va, 1).map_err(fail)?;
    mm::flush();
    wrote.map_err(|f| detail(format_args!("writing the page: {f}")))?;
    let d = nx?;
    protected.map_err(fail)?;
    ran.map_err(|f| {
        detail(format_args!(
            "the page made read+execute still does not run: {f}"
        ))
    })?;
    Ok(detail(format_args!(
        "{d}; runs once protected read+execute"
    )))
}

/// W+X is refused by map, map_anon and protect, inside a batch too, and
/// refusing leaves nothing behind; a read+execute page refuses writes.
pub fn wx_refused() -> Outcome {
    let va = region(1);
    let frame = FRAMES
        .lock()
        .as_mut()
        .ok_or_else(|| detail(format_args!("no frame allocator")))?
        .alloc()
        .map_err(|e| detail(format_args!("{e}")))?;
    let free_before = mm::free_frames();
    let tables_before = mm::table_pages();
    let refused = [
        ("map_anon", mm::map_anon(va, 4, WRITE_AND_EXEC)),
        // SAFETY: a frame this test allocated (the map is refused anyway).
        ("map", unsafe { mm::map(va, &[frame], WRITE_AND_EXEC) }),
        ("map_anon in a batch", {
            mm::batch(|| mm::map_anon(va, 1, WRITE_AND_EXEC))
        }),
    ];
    let leftover = (0..4).any(|i| mm::translate(va + i * PAGE).is_some());
    mm::map_anon(va, 1, Prot::READ_EXEC).map_err(fail)?;
    let protect = mm::protect(va, 1, WRITE_AND_EXEC);
    mm::flush();
    let kept = mm::translate(va).map(|t| t.prot);
    // SAFETY: if the write went through it would store into our own page.
    let write = unsafe { probe_write(va, 0) };
    mm::unmap(va, 1).map_err(fail)?;
    mm::flush();
    let leaked =
        free_before as i64 - mm::free_frames() as i64 - (mm::table_pages() - tables_before) as i64;
    if let Some(f) = FRAMES.lock().as_mut() {
        let _ = f.free(frame);
    }
    for (what, r) in refused.iter().chain([("protect", protect)].iter()) {
        if *r != Err(Error::WriteAndExecute) {
            return Err(detail(format_args!("{what} writable+executable: {r:?}")));
        }
    }
    if leftover || kept != Some(Prot::READ_EXEC) || leaked != 0 {
        return Err(detail(format_args!(
            "after refusals: something mapped {leftover}, protection {kept:?}, {leaked} frames leaked"
        )));
    }
    expect_pf(write, va.as_u64(), true).map(|d| {
        detail(format_args!(
            "4 W+X requests refused, nothing left behind; read+execute page: {d}"
        ))
    })
}

/// Burns stack until something stops it. `extern "C"` so the stack probe
/// can call it; the addition after the call keeps it from becoming a loop.
extern "C" fn recurse(depth: u64) -> u64 {
    let mut frame = [0u8; 256];
    core::hint::black_box(&mut frame);
    if core::hint::black_box(depth) == u64::MAX {
        return 0;
    }
    recurse(depth + 1).wrapping_add(u64::from(frame[(depth % 256) as usize]))
}

/// Overflows a 16 KiB test stack (mapped with `map_anon`, an unmapped guard
/// page below it) twice: each time the #PF cannot be delivered on the full
/// stack, the CPU raises #DF on its own IST stack, and the handler, seeing
/// the armed probe and CR2 in the guard page, resumes on the saved stack.
pub fn stack_overflow_recovered() -> Outcome {
    const STACK_PAGES: u64 = 4;
    let guard = region(2);
    let stack = guard + PAGE;
    let top = stack + STACK_PAGES * PAGE;
    mm::map_anon(stack, STACK_PAGES, Prot::READ_WRITE).map_err(fail)?;
    // The stack must be live in the hardware tables: a fault on it can no
    // longer reach the mm's fault-driven flush.
    mm::flush();
    let run = || {
        // SAFETY: `top` tops 4 mapped pages nobody else uses, with the guard
        // page unmapped below; `recurse` holds no locks.
        unsafe { probe_stack_overflow(top, guard, stack, recurse, 0) }
    };
    let results = [run(), run()];
    mm::unmap(stack, STACK_PAGES).map_err(fail)?;
    mm::flush();
    let cpu = percpu::cpu_index();
    let df_top = stacks::tops(cpu).df_top.as_u64();
    let on_ist = |o: &StackOverflow| (df_top - DF_STACK_BYTES..df_top).contains(&o.handler_rsp);
    let mut last = None;
    for r in results {
        match r {
            Err(o) if o.fault.vector == 8 && on_ist(&o) => last = Some(o),
            Err(o) => {
                return Err(detail(format_args!(
                    "caught {} at {:#x} with the handler at rsp {:#x}, not a #DF on \
                     cpu{cpu}'s IST stack [{:#x}, {df_top:#x})",
                    o.fault,
                    o.fault.addr,
                    o.handler_rsp,
                    df_top - DF_STACK_BYTES
                )))
            }
            Ok(()) => return Err(detail(format_args!("the recursion returned"))),
        }
    }
    let o = last.expect("two results checked");
    Ok(detail(format_args!(
        "stack overflow: #DF at {:#x} in the guard page, handled on IST1 (rsp {:#x}), resumed twice",
        o.fault.addr, o.handler_rsp
    )))
}

/// `test=overflow`: overflow the kernel stack itself with no probe armed;
/// the #DF report must name the stack overflow and end the run.
pub fn deliberate_overflow() -> ! {
    log::info!("deliberate stack overflow: recursing on the kernel stack");
    let depth = recurse(0);
    log::error!("the recursion returned ({depth}) instead of overflowing");
    power::exit(power::EXIT_FAILURE)
}

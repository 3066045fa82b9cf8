//! In-guest fault-injection tests of the mm (issue 5): the frame allocator
//! runs dry in the middle of a batch, for a data frame and for a
//! page-table page. The failing call gets its error, the entries before it
//! stay applied and consistent, later calls work, and no frame leaks.

// See selftest/mod.rs: outcomes carry their message.
#![allow(clippy::result_large_err)]

use super::{detail, Detail};
use crate::arch::x86_64::interrupts::{probe_read, probe_write};
use crate::mm::{self, Protection as Prot};
use hyperbatch::cmdline::Backend;
use hyperbatch::mm::{Error, WINDOW_BASE};
use x86_64::VirtAddr;

type Outcome = Result<Detail, Detail>;
const PAGE: u64 = 4096;
/// One leaf table's reach: a region this far away needs a table of its own.
const LEAF_SPAN: u64 = 2 << 20;

/// This file's 1 GiB slices of the window.
fn region(n: u64) -> VirtAddr {
    VirtAddr::new(WINDOW_BASE + (43 + n) * (1 << 30))
}

fn fail(e: Error) -> Detail {
    detail(format_args!("{e}"))
}

fn fail_after(n: Option<u64>) {
    mm::set_alloc_failure(n);
}

fn marker(va: VirtAddr) -> u64 {
    va.as_u64() ^ 0x0ddb_a11c_0ffe
}

/// Writes a marker into each page of `[va, va + pages)` and reads it back.
fn write_and_check(va: VirtAddr, pages: u64) -> Result<(), Detail> {
    for i in 0..pages {
        let p = va + i * PAGE;
        // SAFETY: the caller mapped these pages writable for this test.
        unsafe { probe_write(p, marker(p)) }
            .map_err(|f| detail(format_args!("{:#x} not writable: {f}", p.as_u64())))?;
        match probe_read(p) {
            Ok(v) if v == marker(p) => {}
            r => return Err(detail(format_args!("{:#x} read {r:?}", p.as_u64()))),
        }
    }
    Ok(())
}

/// `[va, va + pages)` has no translation and faults.
fn check_gone(va: VirtAddr, pages: u64) -> Result<(), Detail> {
    for i in 0..pages {
        let p = va + i * PAGE;
        if let Some(t) = mm::translate(p) {
            return Err(detail(format_args!(
                "{:#x} of the failed call is mapped to {:#x}",
                p.as_u64(),
                t.phys.as_u64()
            )));
        }
        if probe_read(p).is_ok() {
            return Err(detail(format_args!(
                "{:#x} of the failed call is readable",
                p.as_u64()
            )));
        }
    }
    Ok(())
}

fn leaked(free_before: u64, tables_before: u64) -> i64 {
    free_before as i64 - mm::free_frames() as i64 - (mm::table_pages() - tables_before) as i64
}

/// The allocator fails on the 4th frame of a 6-page map_anon, in a batch
/// that already holds two maps.
pub fn out_of_frames_mid_batch() -> Outcome {
    let base = region(0);
    // Tables first (a map and unmap far enough away in the same leaf
    // table), so the injected failure lands on a data frame.
    mm::map_anon(base + 64 * PAGE, 1, Prot::READ).map_err(fail)?;
    mm::unmap(base + 64 * PAGE, 1).map_err(fail)?;
    mm::flush();
    let free_before = mm::free_frames();
    let tables_before = mm::table_pages();
    let (a, b, c) = (base, base + 8 * PAGE, base + 16 * PAGE);
    let (first, second, failed, after, pending) = mm::batch(|| {
        let first = mm::map_anon(a, 4, Prot::READ_WRITE);
        let second = mm::map_anon(b, 2, Prot::READ_WRITE);
        fail_after(Some(3));
        let failed = mm::map_anon(c, 6, Prot::READ_WRITE);
        fail_after(None);
        // Later entries of the same batch still work.
        let after = mm::unmap(b, 1);
        (first, second, failed, after, mm::pending())
    });
    first.map_err(fail)?;
    second.map_err(fail)?;
    after.map_err(fail)?;
    if failed != Err(Error::OutOfFrames) {
        return Err(detail(format_args!(
            "map_anon with the 4th frame failing: {failed:?}"
        )));
    }
    if mm::backend() == Backend::Batched && pending == 0 {
        return Err(detail(format_args!(
            "the batch held nothing when the allocation failed"
        )));
    }
    let checks = write_and_check(a, 4)
        .and_then(|_| write_and_check(b + PAGE, 1))
        .and_then(|_| check_gone(b, 1))
        .and_then(|_| check_gone(c, 6));
    let _ = mm::unmap(a, 4);
    let _ = mm::unmap(b + PAGE, 1);
    mm::flush();
    checks?;
    match leaked(free_before, tables_before) {
        0 => Ok(detail(format_args!(
            "4th of 6 frames failed with {pending} entries pending: error returned, \
             earlier maps intact, no frame leaked"
        ))),
        n => Err(detail(format_args!("{n} frames leaked"))),
    }
}

/// The allocator fails on the page-table page a map into a fresh 2 MiB
/// needs, in a batch that already holds a map.
pub fn out_of_tables_mid_batch() -> Outcome {
    let base = region(1);
    let fresh = base + 3 * LEAF_SPAN;
    let free_before = mm::free_frames();
    let tables_before = mm::table_pages();
    let (first, failed, after) = mm::batch(|| {
        let first = mm::map_anon(base, 2, Prot::READ_WRITE);
        fail_after(Some(0));
        let failed = mm::map_anon(fresh, 1, Prot::READ_WRITE);
        fail_after(None);
        let after = mm::map_anon(base + 4 * PAGE, 1, Prot::READ_WRITE);
        (first, failed, after)
    });
    first.map_err(fail)?;
    after.map_err(fail)?;
    if failed != Err(Error::OutOfTables) {
        return Err(detail(format_args!(
            "map_anon needing a new table, with the allocator dry: {failed:?}"
        )));
    }
    let checks = write_and_check(base, 2)
        .and_then(|_| write_and_check(base + 4 * PAGE, 1))
        .and_then(|_| check_gone(fresh, 1));
    let _ = mm::unmap(base, 2);
    let _ = mm::unmap(base + 4 * PAGE, 1);
    mm::flush();
    checks?;
    // Tables the failed call made before the failure stay, counted.
    match leaked(free_before, tables_before) {
        0 => Ok(detail(format_args!(
            "table allocation failed mid-batch: OutOfTables, earlier and later maps intact, \
             {} table pages kept and counted, no frame leaked",
            mm::table_pages() - tables_before
        ))),
        n => Err(detail(format_args!("{n} frames leaked"))),
    }
}

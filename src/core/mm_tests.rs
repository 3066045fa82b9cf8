//! Host proof of the mm core: [`crate::mm`], the code the kernel runs,
//! driven on fake RAM by simulated vCPUs.
//!
//! [`Machine`] is N vCPUs' worth of hardware: a TLB each that fills when
//! the test touches a page and is emptied only by that vCPU's own
//! invalidations and by shootdowns, and a pool of data frames that checks
//! the `mmu_gather` rule at every release (no TLB may still reach the
//! frame) and catches double and foreign frees. [`Harness`] gives each
//! simulated vCPU its own [`Queue`] and calls the core with that vCPU's
//! [`Mmu`] view, exactly as `src/mm.rs` does for a real vCPU. The random
//! test at the end compares the whole stack with a plain reference model.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;

use x86_64::structures::paging::{Page, PhysFrame, Size2MiB};
use x86_64::{PhysAddr, VirtAddr};

use crate::mm::{
    Error, Frames, Mm, Mmu, PageSize, Prot, TableSlot, Window, MAX_CPUS, OWNED, WINDOW_BASE,
    WINDOW_SIZE, WINDOW_TABLES,
};
use crate::paging::{LeafSize, PageTables, TableAlloc};
use crate::phys::fake::FakeRam;
use crate::phys::PhysMemory;
use crate::queue::{Counters, Cr, Entry, Invalidation, Queue, Trigger, INVLPG_CEILING};

/// Fake RAM: the root table, then page-table frames, then data frames,
/// then 2 MiB data frames from a 2 MiB boundary.
const RAM_BASE: u64 = 0x20_0000;
const TABLE_FRAMES: u64 = 256;
const DATA_FRAMES: u64 = 1024;
const DATA_BASE: u64 = RAM_BASE + (1 + TABLE_FRAMES) * 4096;
const LARGE_FRAMES: u64 = 6;
const LARGE_BASE: u64 = (DATA_BASE + DATA_FRAMES * 4096).next_multiple_of(TWO_MIB);
const RAM_LEN: usize = (LARGE_BASE + LARGE_FRAMES * TWO_MIB - RAM_BASE) as usize;
/// Frames `map` is given, as a driver would map a device (never read).
const DEVICE_BASE: u64 = 0x80_0000_0000;
const TWO_MIB: u64 = 0x20_0000;

/// What a TLB entry and a table walk yield: frame address, protection and
/// whether the mm owns the frame.
type Seen = (PhysAddr, Prot, bool);

fn page(va: u64) -> Page {
    Page::containing_address(VirtAddr::new(va))
}

fn wva(i: u64) -> u64 {
    WINDOW_BASE + i * 4096
}

fn wpage(i: u64) -> Page {
    page(wva(i))
}

fn frame(pa: u64) -> PhysFrame {
    PhysFrame::containing_address(PhysAddr::new(pa))
}

fn device(i: u64) -> PhysFrame {
    frame(DEVICE_BASE + i * 4096)
}

fn frame_2m(pa: u64) -> PhysFrame<Size2MiB> {
    PhysFrame::containing_address(PhysAddr::new(pa))
}

fn device_2m(i: u64) -> PhysFrame<Size2MiB> {
    frame_2m(DEVICE_BASE + i * TWO_MIB)
}

/// The 2 MiB-aligned base of `p`'s 2 MiB.
fn base_2m(p: Page) -> Page {
    page(p.start_address().as_u64() & !(TWO_MIB - 1))
}

/// Memory that must outlive the [`Window`] that borrows it.
struct Env {
    ram: FakeRam,
    slots: Vec<TableSlot>,
    flushed: Vec<AtomicU64>,
}

impl Env {
    fn new() -> Env {
        Env {
            ram: FakeRam::new(RAM_BASE, RAM_LEN),
            slots: (0..WINDOW_TABLES).map(|_| TableSlot::new()).collect(),
            flushed: (0..MAX_CPUS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// One simulated TLB: 4 KiB entries, with a count per frame so the release
/// check is cheap, and 2 MiB entries (one per large page, as hardware
/// keeps them), keyed by the large page's base.
#[derive(Default)]
struct Tlb {
    map: HashMap<Page, Seen>,
    frames: HashMap<PhysFrame, u32>,
    large: HashMap<Page, Seen>,
}

impl Tlb {
    /// What a 4 KiB page translates to: a 4 KiB entry, or the 2 MiB entry
    /// covering it (its frame's address plus the offset).
    fn get(&self, p: Page) -> Option<Seen> {
        if let Some(s) = self.map.get(&p) {
            return Some(*s);
        }
        let b = base_2m(p);
        self.large
            .get(&b)
            .map(|&(pa, prot, owned)| (pa + (p.start_address() - b.start_address()), prot, owned))
    }

    fn insert(&mut self, p: Page, s: Seen, size: PageSize) {
        self.remove(p);
        match size {
            PageSize::Small => {
                self.map.insert(p, s);
                *self.frames.entry(frame(s.0.as_u64())).or_default() += 1;
            }
            PageSize::Large => {
                let b = base_2m(p);
                let base = PhysAddr::new(s.0.as_u64() - (p.start_address() - b.start_address()));
                self.large.insert(b, (base, s.1, s.2));
            }
        }
    }

    /// `invlpg`: drops whatever entry translates the address, of either size.
    fn remove(&mut self, p: Page) {
        if let Some(old) = self.map.remove(&p) {
            let f = frame(old.0.as_u64());
            let n = self.frames.get_mut(&f).expect("counted when inserted");
            *n -= 1;
            if *n == 0 {
                self.frames.remove(&f);
            }
        }
        self.large.remove(&base_2m(p));
    }

    fn clear(&mut self) {
        self.map.clear();
        self.frames.clear();
        self.large.clear();
    }

    /// Whether any entry reaches 4 KiB frame `f`.
    fn reaches(&self, f: PhysFrame) -> bool {
        let a = f.start_address().as_u64();
        self.frames.contains_key(&f)
            || self
                .large
                .values()
                .any(|s| (s.0.as_u64()..s.0.as_u64() + TWO_MIB).contains(&a))
    }

    /// Whether any entry reaches a byte of 2 MiB frame `f`.
    fn reaches_2m(&self, f: PhysFrame<Size2MiB>) -> bool {
        let base = f.start_address().as_u64();
        let inside = |a: u64| (base..base + TWO_MIB).contains(&a);
        self.frames
            .keys()
            .any(|k| inside(k.start_address().as_u64()))
            || self.large.values().any(|s| s.0.as_u64() == base)
    }
}

/// The hardware of N simulated vCPUs, shared by their [`Mmu`] views and
/// the frame pool (interior mutability: the core holds both at once).
struct Machine<'e> {
    ram: &'e FakeRam,
    root: PhysFrame,
    tlbs: RefCell<Vec<Tlb>>,
    /// Page-table frames: next, end.
    tables: Cell<(u64, u64)>,
    /// Data frames for map_anon, last in first out (so a freed frame is
    /// reused soon, which is what the release check needs to bite).
    free: RefCell<Vec<PhysFrame>>,
    allocated: RefCell<HashSet<PhysFrame>>,
    /// Allocations left before one fails (fault injection).
    fail_after: Cell<Option<u64>>,
    /// What the kernel's reclaim (other vCPUs flushing on request) would
    /// give back, and how often it was asked.
    reclaimable: RefCell<Vec<PhysFrame>>,
    reclaims: Cell<u64>,
    released: RefCell<Vec<PhysFrame>>,
    /// 2 MiB data frames, as `free`; and what came back.
    free_2m: RefCell<Vec<PhysFrame<Size2MiB>>>,
    allocated_2m: RefCell<HashSet<PhysFrame<Size2MiB>>>,
    released_2m: RefCell<Vec<PhysFrame<Size2MiB>>>,
    cr_writes: RefCell<Vec<(usize, Cr, u64)>>,
    shootdowns: Cell<u64>,
    /// Set false to model a kernel that forgot the shootdown.
    shootdowns_work: Cell<bool>,
    violations: RefCell<Vec<String>>,
}

impl Machine<'_> {
    fn violation(&self, s: String) {
        let mut v = self.violations.borrow_mut();
        if v.len() < 50 {
            v.push(s);
        }
    }

    fn invalidate(&self, cpu: usize, inv: &Invalidation) {
        let mut tlbs = self.tlbs.borrow_mut();
        match inv {
            Invalidation::Pages(pages) => {
                for &p in pages {
                    tlbs[cpu].remove(p);
                }
            }
            Invalidation::All => tlbs[cpu].clear(),
        }
    }

    /// What the tables say about `p` (a walk from the root, as the MMU
    /// does it).
    fn walk(&self, p: Page) -> Option<Seen> {
        self.walk_sized(p).map(|(s, _)| s)
    }

    fn walk_sized(&self, p: Page) -> Option<(Seen, PageSize)> {
        // SAFETY: the harness's tables, read only.
        let t = unsafe { PageTables::new(self.ram, self.root) };
        let tr = t.translate(p.start_address()).ok()?;
        let size = match tr.size {
            LeafSize::Page4KiB => PageSize::Small,
            LeafSize::Page2MiB => PageSize::Large,
            LeafSize::Page1GiB => unreachable!("the window maps no 1 GiB pages"),
        };
        Some((
            (
                tr.phys,
                Prot::from_flags(tr.flags),
                tr.flags.contains(OWNED),
            ),
            size,
        ))
    }
}

/// One vCPU's privileged operations.
struct CpuMmu<'a, 'e> {
    m: &'a Machine<'e>,
    me: usize,
}

impl Mmu for CpuMmu<'_, '_> {
    fn invlpg(&mut self, page: Page) {
        self.m.tlbs.borrow_mut()[self.me].remove(page);
    }

    fn flush_all(&mut self) {
        self.m.tlbs.borrow_mut()[self.me].clear();
    }

    fn shootdown(&mut self, inv: &Invalidation) -> u32 {
        let cpus = self.m.tlbs.borrow().len();
        if cpus == 1 {
            return 0;
        }
        self.m.shootdowns.set(self.m.shootdowns.get() + 1);
        if self.m.shootdowns_work.get() {
            for cpu in (0..cpus).filter(|&c| c != self.me) {
                self.m.invalidate(cpu, inv);
            }
        }
        cpus as u32 - 1
    }

    fn write_cr(&mut self, reg: Cr, value: u64) {
        self.m.cr_writes.borrow_mut().push((self.me, reg, value));
    }
}

/// The frame pool, as the core sees it.
struct Pool<'a, 'e> {
    m: &'a Machine<'e>,
}

// SAFETY: table frames lie in the fake RAM after the root, each handed out
// once; nothing else uses them.
unsafe impl TableAlloc for Pool<'_, '_> {
    fn alloc_table(&mut self) -> Option<PhysFrame> {
        let (next, end) = self.m.tables.get();
        if next >= end {
            return None;
        }
        self.m.tables.set((next + 4096, end));
        Some(frame(next))
    }
}

// SAFETY: data frames lie in the fake RAM (reachable), and `allocated`
// makes sure each is handed out once until freed.
unsafe impl Frames for Pool<'_, '_> {
    fn alloc_zeroed(&mut self) -> Option<PhysFrame> {
        if let Some(n) = self.m.fail_after.get() {
            if n == 0 {
                self.m.fail_after.set(None);
                return None;
            }
            self.m.fail_after.set(Some(n - 1));
        }
        let f = self.m.free.borrow_mut().pop()?;
        self.m.ram.write(f.start_address().as_u64(), &[0u8; 4096]);
        self.m.allocated.borrow_mut().insert(f);
        Some(f)
    }

    fn reclaim(&mut self) -> bool {
        self.m.reclaims.set(self.m.reclaims.get() + 1);
        let mut back = self.m.reclaimable.borrow_mut();
        let any = !back.is_empty();
        self.m.free.borrow_mut().append(&mut back);
        any
    }

    fn free(&mut self, f: PhysFrame) {
        if !self.m.allocated.borrow_mut().remove(&f) {
            self.m.violation(format!(
                "{f:?} freed, but it is not allocated (double or foreign free)"
            ));
            return;
        }
        for (cpu, tlb) in self.m.tlbs.borrow().iter().enumerate() {
            if tlb.reaches(f) {
                self.m.violation(format!(
                    "{f:?} released while cpu{cpu}'s TLB still reaches it"
                ));
            }
        }
        // A frame whose page is mapped again must not be released either.
        let mut buf = [0u8; 8];
        if self.m.ram.read(f.start_address(), &mut buf).is_none() {
            self.m.violation(format!("{f:?} is outside the data pool"));
        }
        self.m.free.borrow_mut().push(f);
        self.m.released.borrow_mut().push(f);
    }
    fn alloc_zeroed_2m(&mut self) -> Option<PhysFrame<Size2MiB>> {
        if let Some(n) = self.m.fail_after.get() {
            if n == 0 {
                self.m.fail_after.set(None);
                return None;
            }
            self.m.fail_after.set(Some(n - 1));
        }
        let f = self.m.free_2m.borrow_mut().pop()?;
        self.m
            .ram
            .write(f.start_address().as_u64(), &vec![0u8; TWO_MIB as usize]);
        self.m.allocated_2m.borrow_mut().insert(f);
        Some(f)
    }

    fn free_2m(&mut self, f: PhysFrame<Size2MiB>) {
        if !self.m.allocated_2m.borrow_mut().remove(&f) {
            self.m.violation(format!(
                "{f:?} freed, but it is not allocated (double or foreign free)"
            ));
            return;
        }
        for (cpu, tlb) in self.m.tlbs.borrow().iter().enumerate() {
            if tlb.reaches_2m(f) {
                self.m.violation(format!(
                    "{f:?} released while cpu{cpu}'s TLB still reaches it"
                ));
            }
        }
        self.m.free_2m.borrow_mut().push(f);
        self.m.released_2m.borrow_mut().push(f);
    }
}

/// The mm core on N simulated vCPUs.
struct Harness<'e> {
    m: Machine<'e>,
    window: Window<'e, FakeRam>,
    queues: Vec<Queue>,
}

impl<'e> Harness<'e> {
    /// `cpus` vCPUs, every queue in MMU lazy mode (the batched backend's
    /// resting state) unless `lazy` is false.
    fn new(env: &'e Env, cpus: usize, data_frames: u64, lazy: bool) -> Harness<'e> {
        assert!(data_frames <= DATA_FRAMES);
        let root = frame(RAM_BASE);
        // SAFETY: the root is the first (zeroed) frame of a fake RAM only
        // this harness uses; the pool hands out the frames after it; the
        // fake RAM's pages never move; the slot arrays are fresh.
        let window = unsafe { Window::new(&env.ram, root, &env.slots, &env.flushed) };
        let m = Machine {
            ram: &env.ram,
            root,
            tlbs: RefCell::new((0..cpus).map(|_| Tlb::default()).collect()),
            tables: Cell::new((RAM_BASE + 4096, DATA_BASE)),
            free: RefCell::new(
                (0..data_frames)
                    .rev()
                    .map(|i| frame(DATA_BASE + i * 4096))
                    .collect(),
            ),
            allocated: RefCell::new(HashSet::new()),
            fail_after: Cell::new(None),
            reclaimable: RefCell::new(Vec::new()),
            reclaims: Cell::new(0),
            released: RefCell::new(Vec::new()),
            free_2m: RefCell::new(
                (0..LARGE_FRAMES)
                    .rev()
                    .map(|i| frame_2m(LARGE_BASE + i * TWO_MIB))
                    .collect(),
            ),
            allocated_2m: RefCell::new(HashSet::new()),
            released_2m: RefCell::new(Vec::new()),
            cr_writes: RefCell::new(Vec::new()),
            shootdowns: Cell::new(0),
            shootdowns_work: Cell::new(true),
            violations: RefCell::new(Vec::new()),
        };
        let mut queues: Vec<Queue> = (0..cpus).map(|_| Queue::new()).collect();
        if lazy {
            for q in &mut queues {
                q.enter_lazy_mmu();
            }
        }
        Harness { m, window, queues }
    }

    /// Runs `f` as vCPU `cpu`, the way `src/mm.rs`'s `with_mm` does.
    fn on<R>(
        &mut self,
        cpu: usize,
        f: impl FnOnce(&mut Mm<'_, 'e, FakeRam, Pool<'_, 'e>, CpuMmu<'_, 'e>>) -> R,
    ) -> R {
        let mut frames = Pool { m: &self.m };
        let mut mmu = CpuMmu {
            m: &self.m,
            me: cpu,
        };
        let mut mm = Mm {
            window: &self.window,
            queue: &mut self.queues[cpu],
            me: cpu,
            frames: &mut frames,
            mmu: &mut mmu,
        };
        f(&mut mm)
    }

    fn map(&mut self, cpu: usize, va: u64, frames: &[PhysFrame], prot: Prot) -> Result<(), Error> {
        // SAFETY: device frames, never read or written through fake RAM.
        self.on(cpu, |m| unsafe { m.map(VirtAddr::new(va), frames, prot) })
    }

    fn map_anon(&mut self, cpu: usize, va: u64, pages: u64, prot: Prot) -> Result<(), Error> {
        self.on(cpu, |m| m.map_anon(VirtAddr::new(va), pages, prot))
    }

    fn unmap(&mut self, cpu: usize, va: u64, pages: u64) -> Result<(), Error> {
        self.on(cpu, |m| m.unmap(VirtAddr::new(va), pages))
    }

    fn protect(&mut self, cpu: usize, va: u64, pages: u64, prot: Prot) -> Result<(), Error> {
        self.on(cpu, |m| m.protect(VirtAddr::new(va), pages, prot))
    }

    fn flush(&mut self, cpu: usize) {
        self.on(cpu, |m| m.flush(Trigger::Explicit));
    }

    fn map_2m(
        &mut self,
        cpu: usize,
        va: u64,
        frames: &[PhysFrame<Size2MiB>],
        prot: Prot,
    ) -> Result<(), Error> {
        // SAFETY: device frames, never read or written through fake RAM.
        self.on(cpu, |m| unsafe {
            m.map_2m(VirtAddr::new(va), frames, prot)
        })
    }

    fn map_anon_2m(&mut self, cpu: usize, va: u64, count: u64, prot: Prot) -> Result<(), Error> {
        self.on(cpu, |m| m.map_anon_2m(VirtAddr::new(va), count, prot))
    }

    fn unmap_2m(&mut self, cpu: usize, va: u64, count: u64) -> Result<(), Error> {
        self.on(cpu, |m| m.unmap_2m(VirtAddr::new(va), count))
    }

    fn protect_2m(&mut self, cpu: usize, va: u64, count: u64, prot: Prot) -> Result<(), Error> {
        self.on(cpu, |m| m.protect_2m(VirtAddr::new(va), count, prot))
    }

    fn enter(&mut self, cpu: usize) {
        self.on(cpu, |m| m.enter_lazy_mmu());
    }

    fn leave(&mut self, cpu: usize) -> Result<(), crate::queue::Error> {
        self.on(cpu, |m| m.leave_lazy_mmu())
    }

    fn counters(&self, cpu: usize) -> Counters {
        *self.queues[cpu].counters()
    }

    fn tables(&self, p: Page) -> Option<Seen> {
        self.m.walk(p)
    }

    /// A read of `p` by `cpu`: through its TLB, filled from the tables on
    /// a miss. `None`: it faulted (not present).
    fn touch(&mut self, cpu: usize, p: Page) -> Option<Seen> {
        if let Some(s) = self.m.tlbs.borrow()[cpu].get(p) {
            return Some(s);
        }
        let (s, size) = self.m.walk_sized(p)?;
        self.m.tlbs.borrow_mut()[cpu].insert(p, s, size);
        Some(s)
    }

    /// A write to `p` by `cpu`. A write through a read-only TLB entry
    /// faults; the core's fault hook decides whether the access is retried.
    /// Returns what the write went through, or `None` for a real fault.
    fn write(&mut self, cpu: usize, p: Page) -> Option<Seen> {
        for _ in 0..2 {
            let s = self.touch(cpu, p)?;
            if s.1.write {
                return Some(s);
            }
            // Delivering the #PF drops the faulting translation (Intel SDM
            // vol. 3, 4.10.4.1); then the hook decides.
            self.m.tlbs.borrow_mut()[cpu].remove(p);
            if !self.on(cpu, |m| m.fault(p.start_address(), 2)) {
                return None;
            }
        }
        self.m.violation(format!(
            "cpu{cpu}: the fault hook retried a write to {p:?} twice"
        ));
        None
    }

    fn violations(&self) -> Vec<String> {
        self.m.violations.borrow().clone()
    }

    /// Flushes every vCPU and checks that nothing is left behind: no
    /// violation, every TLB agrees with the tables.
    fn assert_clean(&mut self) {
        for cpu in 0..self.queues.len() {
            self.flush(cpu);
            assert!(self.queues[cpu].is_empty());
        }
        let tlbs = self.m.tlbs.borrow();
        for (cpu, tlb) in tlbs.iter().enumerate() {
            for (&p, &s) in tlb.map.iter().chain(&tlb.large) {
                assert_eq!(self.m.walk(p), Some(s), "cpu{cpu}'s TLB disagrees on {p:?}");
            }
        }
        drop(tlbs);
        assert_eq!(self.violations(), Vec::<String>::new());
    }
}

fn seen(f: PhysFrame, prot: Prot, owned: bool) -> Option<Seen> {
    Some((f.start_address(), prot, owned))
}

const RW: Prot = Prot::READ_WRITE;
const RO: Prot = Prot::READ;
const WX: Prot = Prot {
    write: true,
    exec: true,
};

// ------------------------------------------------------------- the queue

/// Every record kind drains in program order, the invalidations
/// coalesced, and the releases only after the shootdown.
#[test]
fn a_flush_drains_in_order_and_releases_last() {
    let env = Env::new();
    let mut h = Harness::new(&env, 2, 8, true);
    h.map_anon(0, wva(0), 2, RW).unwrap();
    let f0 = h.tables(wpage(0)).unwrap().0;
    // cpu1 caches page 0.
    assert!(h.touch(1, wpage(0)).is_some());
    h.unmap(0, wva(0), 2).unwrap();
    // In lazy mode nothing is issued yet: the entry is clear, the frame
    // still allocated, cpu1's TLB still reaches it.
    assert_eq!(h.tables(wpage(0)), None);
    assert!(h.m.allocated.borrow().contains(&frame(f0.as_u64())));
    assert!(h.m.tlbs.borrow()[1].get(wpage(0)).is_some());
    assert_eq!(h.queues[0].len(), 1, "one record for the range");
    let before = h.counters(0);
    h.flush(0);
    let c = h.counters(0).since(&before);
    assert_eq!((c.invlpg, c.full_flushes, c.shootdowns), (2, 0, 1));
    assert_eq!(c.frames_released, 2);
    assert_eq!(c.flushes[Trigger::Explicit as usize], 1);
    assert!(h.m.tlbs.borrow()[1].get(wpage(0)).is_none());
    assert!(!h.m.allocated.borrow().contains(&frame(f0.as_u64())));
    h.assert_clean();
}

/// A flush of an empty ring issues and counts nothing.
#[test]
fn flushing_an_empty_ring_issues_nothing() {
    let env = Env::new();
    let mut h = Harness::new(&env, 2, 0, true);
    h.flush(0);
    h.on(0, |m| m.leave_lazy_mmu()).unwrap();
    assert_eq!(h.counters(0), Counters::ZERO);
    assert_eq!(h.m.shootdowns.get(), 0);
}

/// Per-page unmaps that continue each other coalesce into one record;
/// ones that do not take a record each, and the ring flushes once when it
/// fills, losing nothing.
#[test]
fn records_coalesce_and_a_full_ring_flushes_once() {
    let env = Env::new();
    let mut h = Harness::new(&env, 1, 0, true);
    let n = 600;
    let frames: Vec<PhysFrame> = (0..n).map(device).collect();
    h.map(0, wva(0), &frames, RO).unwrap();
    for i in 0..64 {
        h.unmap(0, wva(i), 1).unwrap();
    }
    assert_eq!(h.queues[0].len(), 1);
    assert_eq!(h.counters(0).enqueued, 1);
    // Every other page from 65 on: 268 records, more than the ring holds.
    for i in (65..n).step_by(2) {
        h.unmap(0, wva(i), 1).unwrap();
    }
    let c = h.counters(0);
    assert_eq!(c.flushes[Trigger::Full as usize], 1);
    assert_eq!(c.enqueued, 1 + (n - 64) / 2);
    assert_eq!(
        c.invlpg + c.full_flushes,
        1,
        "the full ring: one full flush"
    );
    assert_eq!(h.queues[0].len() as u64, c.enqueued - 256);
    for i in 0..n {
        let mapped = i >= 64 && i % 2 == 0;
        assert_eq!(h.tables(wpage(i)).is_some(), mapped, "page {i}");
    }
    h.assert_clean();
}

/// The counters record what is issued, per trigger, and the target side.
#[test]
fn counters_record_every_trigger_and_add_up() {
    let env = Env::new();
    let mut h = Harness::new(&env, 2, 16, true);
    h.map_anon(0, wva(0), 4, RW).unwrap();
    h.protect(0, wva(0), 4, RO).unwrap();
    h.flush(0);
    h.enter(0);
    h.unmap(0, wva(0), 4).unwrap();
    h.leave(0).unwrap();
    let c = h.counters(0);
    assert_eq!(c.flushes[Trigger::Explicit as usize], 1);
    assert_eq!(c.flushes[Trigger::Leave as usize], 1);
    // 4 stores each for map, protect, unmap; 4 cleared marks on release.
    assert_eq!(c.pte_writes, 16);
    assert_eq!(c.invlpg, 8);
    assert_eq!(c.frames_released, 4);
    assert_eq!(c.shootdowns, 2);
    assert_eq!(c.ipis, 2);
    assert_eq!(c.privileged(), c.pte_writes + c.invlpg + c.ipis);
    let mut sum = Counters::ZERO;
    sum.add(&c);
    sum.add(&c);
    assert_eq!(sum.since(&c), c);
    h.assert_clean();
}

// ------------------------------------------------------------- lazy modes

#[test]
fn lazy_mmu_mode_nests_and_every_leave_flushes() {
    let env = Env::new();
    let mut h = Harness::new(&env, 1, 0, false);
    h.map(0, wva(0), &[device(0), device(1)], RO).unwrap();
    // Outside lazy mode an unmap is flushed at once (the immediate backend).
    h.unmap(0, wva(0), 1).unwrap();
    assert!(h.queues[0].is_empty());
    assert_eq!(h.counters(0).flushes[Trigger::Unbatched as usize], 1);
    h.enter(0);
    h.enter(0);
    h.unmap(0, wva(1), 1).unwrap();
    assert_eq!(h.queues[0].len(), 1);
    h.leave(0).unwrap();
    assert!(h.queues[0].is_empty(), "an inner leave flushes");
    assert!(h.queues[0].in_lazy_mmu(), "the outer level is still open");
    h.leave(0).unwrap();
    assert!(!h.queues[0].in_lazy_mmu());
    assert_eq!(
        h.leave(0),
        Err(crate::queue::Error::NotInLazyMode("MMU")),
        "leaving a mode never entered is an error"
    );
    assert_eq!(h.counters(0).flushes[Trigger::Leave as usize], 1);
}

#[test]
fn cpu_lazy_mode_defers_and_coalesces_cr_writes() {
    let env = Env::new();
    let mut h = Harness::new(&env, 1, 0, true);
    let cr4 = 0x3406f0;
    h.on(0, |m| {
        m.enter_lazy_cpu();
        for i in 0..10 {
            m.write_cr(Cr::Cr4, cr4 + (i & 1) * 0x10000);
        }
        assert_eq!(m.read_cr(Cr::Cr4, || unreachable!("cached")), cr4 + 0x10000);
        m.write_cr(Cr::Cr0, 0x8005_0033);
        // PGE (bit 7) toggled: a TLB-flushing pair, which must not merge.
        m.write_cr(Cr::Cr4, cr4 & !0x80);
        m.write_cr(Cr::Cr4, cr4);
    });
    assert!(h.m.cr_writes.borrow().is_empty(), "deferred");
    h.on(0, |m| m.leave_lazy_cpu()).unwrap();
    assert_eq!(
        *h.m.cr_writes.borrow(),
        vec![
            (0, Cr::Cr4, cr4 + 0x10000),
            (0, Cr::Cr0, 0x8005_0033),
            (0, Cr::Cr4, cr4 & !0x80),
            (0, Cr::Cr4, cr4),
        ]
    );
    let c = h.counters(0);
    assert_eq!((c.cr_writes, c.cr_coalesced), (4, 9));
    // Outside CPU lazy mode a write goes out at once, after what is queued.
    h.map(0, wva(0), &[device(0)], RO).unwrap();
    h.unmap(0, wva(0), 1).unwrap();
    assert_eq!(h.queues[0].len(), 1);
    h.on(0, |m| m.write_cr(Cr::Cr4, cr4));
    assert!(h.queues[0].is_empty(), "the queued unmap went first");
    assert_eq!(h.counters(0).cr_writes, 5);
    assert_eq!(
        h.on(0, |m| m.leave_lazy_cpu()),
        Err(crate::queue::Error::NotInLazyMode("CPU"))
    );
}

// ------------------------------------------------------------- coalescing

#[test]
fn invalidations_coalesce_up_to_the_ceiling() {
    let env = Env::new();
    let mut h = Harness::new(&env, 2, 0, true);
    let n = INVLPG_CEILING as u64 + 1;
    let frames: Vec<PhysFrame> = (0..n).map(device).collect();
    h.map(0, wva(0), &frames, RO).unwrap();
    // The ceiling exactly: per-page invlpg, even protected twice.
    h.protect(0, wva(0), INVLPG_CEILING as u64, RW).unwrap();
    h.protect(0, wva(0), INVLPG_CEILING as u64, RO).unwrap();
    let before = h.counters(0);
    h.flush(0);
    let c = h.counters(0).since(&before);
    assert_eq!((c.invlpg, c.full_flushes), (INVLPG_CEILING as u64, 0));
    // One past it: one full flush.
    h.protect(0, wva(0), n, RW).unwrap();
    let before = h.counters(0);
    h.flush(0);
    let c = h.counters(0).since(&before);
    assert_eq!((c.invlpg, c.full_flushes), (0, 1));
    // Protecting to the protection a page has changes nothing and queues
    // nothing.
    h.protect(0, wva(0), n, RW).unwrap();
    assert!(h.queues[0].is_empty());
    // Explicit records: a page, a range past the ceiling, everything.
    let mut inv = Invalidation::none();
    inv.add(wpage(3));
    inv.add(wpage(3));
    inv.add_range(wpage(2), 3);
    assert_eq!(
        inv,
        Invalidation::Pages([wpage(3), wpage(2), wpage(4)].into_iter().collect())
    );
    inv.add_range(wpage(0), INVLPG_CEILING as u32 + 1);
    assert_eq!(inv, Invalidation::All);
    h.on(0, |m| m.queue.push(Entry::InvalidateAll));
    let before = h.counters(0);
    h.flush(0);
    assert_eq!(h.counters(0).since(&before).full_flushes, 1);
    h.assert_clean();
}

/// A queued PTE store (the record kind a host-drained backend needs) is
/// applied before the invalidations, and invalidates the page it replaced.
#[test]
fn queued_pte_writes_apply_first() {
    let env = Env::new();
    let mut h = Harness::new(&env, 2, 0, true);
    h.map(0, wva(0), &[device(0)], RO).unwrap();
    assert!(h.touch(1, wpage(0)).is_some());
    let value = crate::mm::pte(device(7), RO, false).unwrap();
    h.on(0, |m| {
        m.queue.push(Entry::WritePte {
            page: wpage(0),
            value,
        })
    });
    assert_eq!(h.tables(wpage(0)), seen(device(0), RO, false), "deferred");
    let before = h.counters(0);
    h.flush(0);
    let c = h.counters(0).since(&before);
    assert_eq!((c.pte_writes, c.invlpg, c.shootdowns), (1, 1, 1));
    assert_eq!(h.touch(1, wpage(0)), seen(device(7), RO, false));
    h.on(0, |m| {
        m.queue.push(Entry::ReleaseFrame(device(9)));
        assert!(m.queue.has_pending_releases());
    });
}

/// A queued PTE store over a live mark invalidates the page (its old
/// translation may be cached) and gives the frame the mark named back after
/// the shootdown, not never; a frame released by record with nothing else
/// to invalidate takes a full flush.
#[test]
fn queued_pte_writes_respect_marks() {
    let env = Env::new();
    let mut h = Harness::new(&env, 2, 4, true);
    h.map_anon(0, wva(0), 1, RW).unwrap();
    let old = frame(h.tables(wpage(0)).unwrap().0.as_u64());
    assert!(h.touch(1, wpage(0)).is_some());
    h.unmap(0, wva(0), 1).unwrap();
    // A backend that queues stores writes the page again before the flush.
    let value = crate::mm::pte(device(3), RO, false).unwrap();
    h.on(0, |m| {
        m.queue.push(Entry::WritePte {
            page: wpage(0),
            value,
        })
    });
    let before = h.counters(0);
    h.flush(0);
    let c = h.counters(0).since(&before);
    assert!(c.invlpg >= 1 && c.shootdowns == 1, "{c:?}");
    assert!(
        !h.m.allocated.borrow().contains(&old),
        "the marked frame went back"
    );
    assert_eq!(h.touch(1, wpage(0)), seen(device(3), RO, false));
    // A lone release record: every translation goes first.
    let f = h.on(0, |m| m.frames.alloc_zeroed()).unwrap();
    h.on(0, |m| m.queue.push(Entry::ReleaseFrame(f)));
    let before = h.counters(0);
    h.flush(0);
    let c = h.counters(0).since(&before);
    assert_eq!((c.full_flushes, c.frames_released), (1, 1));
    assert_eq!(h.violations(), Vec::<String>::new());
}

// ------------------------------------------------------------- mmu_gather

/// The release check can fail: without the shootdown, cpu1's TLB still
/// reaches a frame when it is released, and the machine reports it.
#[test]
fn a_missing_shootdown_is_caught_at_release() {
    let env = Env::new();
    let mut h = Harness::new(&env, 2, 4, true);
    h.m.shootdowns_work.set(false);
    h.map_anon(0, wva(0), 1, RW).unwrap();
    assert!(h.touch(1, wpage(0)).is_some());
    h.unmap(0, wva(0), 1).unwrap();
    h.flush(0);
    let v = h.violations();
    assert!(
        v.iter().any(|s| s.contains("cpu1's TLB still reaches it")),
        "{v:?}"
    );
}

/// A frame that a pending unmap freed is handed out again only through a
/// flush (Trigger::Reuse); with none pending, the pool is simply empty.
#[test]
fn reuse_flushes_pending_releases_first() {
    let env = Env::new();
    let mut h = Harness::new(&env, 2, 4, true);
    h.map_anon(0, wva(0), 4, RW).unwrap();
    assert!(h.touch(1, wpage(2)).is_some());
    h.unmap(0, wva(0), 4).unwrap();
    assert_eq!(
        h.map_anon(1, wva(512), 1, RW),
        Err(Error::OutOfFrames),
        "cpu1 has nothing to release"
    );
    h.map_anon(0, wva(512), 3, RW).unwrap();
    let c = h.counters(0);
    assert_eq!(c.flushes[Trigger::Reuse as usize], 1);
    assert_eq!(c.frames_released, 4);
    assert_eq!(h.map_anon(0, wva(520), 2, RW), Err(Error::OutOfFrames));
    h.assert_clean();
}

/// An allocation that finds the pool empty flushes its own queue first
/// and asks the kernel to reclaim from other vCPUs only if that was not
/// enough; whatever the reclaim gives back is used, and a reclaim that
/// gives nothing ends in OutOfFrames, without a retry loop.
#[test]
fn reclaim_only_after_own_flush() {
    let env = Env::new();
    let mut h = Harness::new(&env, 2, 4, true);
    h.map_anon(0, wva(0), 4, RW).unwrap();
    h.unmap(0, wva(0), 4).unwrap();
    h.map_anon(0, wva(512), 4, RW).unwrap();
    assert_eq!(h.m.reclaims.get(), 0, "the own flush was enough");
    assert_eq!(h.counters(0).flushes[Trigger::Reuse as usize], 1);

    // The pool is empty; two frames come back only through a reclaim.
    h.unmap(0, wva(512), 2).unwrap();
    h.flush(0);
    let back: Vec<PhysFrame> = h.m.free.borrow_mut().drain(..).collect();
    assert_eq!(back.len(), 2);
    h.m.reclaimable.borrow_mut().extend(back);
    h.map_anon(1, wva(1024), 2, RW).unwrap();
    assert_eq!(h.m.reclaims.get(), 1, "one reclaim for the first page");
    assert_eq!(h.counters(1).flushes[Trigger::Reuse as usize], 0);
    assert_eq!(h.map_anon(1, wva(1030), 1, RW), Err(Error::OutOfFrames));
    assert_eq!(h.m.reclaims.get(), 2, "asked once, not in a loop");
    h.assert_clean();
}

// ------------------------------------------------------------- visibility

/// A map is visible at once, on every vCPU: no fault, no flush.
#[test]
fn a_map_is_visible_at_once() {
    let env = Env::new();
    let mut h = Harness::new(&env, 3, 4, true);
    h.map_anon(0, wva(5), 1, RW).unwrap();
    let s = h.tables(wpage(5));
    assert!(s.is_some());
    for cpu in 0..3 {
        assert_eq!(h.touch(cpu, wpage(5)), s);
    }
    assert_eq!(h.counters(0).flushes_total(), 0);
    assert_eq!(
        h.on(0, |m| m.translate(VirtAddr::new(wva(5) + 8)))
            .map(|t| t.phys),
        s.map(|s| s.0 + 8)
    );
    h.assert_clean();
}

/// A page unmapped and mapped again on the same vCPU before any flush: the
/// map flushes first (Remap), so the new mapping is never reached through
/// the old translation, and the old frame is released by that flush.
#[test]
fn a_remap_flushes_the_old_translation_first() {
    let env = Env::new();
    let mut h = Harness::new(&env, 2, 4, true);
    h.map_anon(0, wva(0), 1, RW).unwrap();
    let old = h.tables(wpage(0));
    assert_eq!(h.touch(1, wpage(0)), old);
    h.unmap(0, wva(0), 1).unwrap();
    h.map_anon(0, wva(0), 1, RW).unwrap();
    let new = h.tables(wpage(0));
    assert_ne!(new, old);
    assert_eq!(h.counters(0).flushes[Trigger::Remap as usize], 1);
    assert_eq!(
        h.touch(1, wpage(0)),
        new,
        "cpu1's old translation was shot down"
    );
    assert_eq!(h.touch(0, wpage(0)), new);
    assert_eq!(h.counters(0).frames_released, 1);
    h.assert_clean();
}

/// cpu0 unmaps a page that cpu1 caches; before cpu0 flushes, cpu2 maps the
/// page again. cpu2 takes cpu0's pending invalidation (and its frame) over
/// and flushes: nobody sees the old frame through the new mapping, the old
/// frame is released once, by cpu2, and cpu0's later flush releases
/// nothing.
#[test]
fn a_remap_on_another_vcpu_takes_the_pending_unmap_over() {
    let env = Env::new();
    let mut h = Harness::new(&env, 3, 4, true);
    h.map_anon(0, wva(0), 1, RW).unwrap();
    let old = h.tables(wpage(0));
    assert_eq!(h.touch(1, wpage(0)), old);
    h.unmap(0, wva(0), 1).unwrap();
    h.map_anon(2, wva(0), 1, RO).unwrap();
    let new = h.tables(wpage(0));
    for cpu in 0..3 {
        assert_eq!(h.touch(cpu, wpage(0)), new, "cpu{cpu}");
    }
    assert_eq!(h.counters(2).flushes[Trigger::Remap as usize], 1);
    assert_eq!(h.counters(2).frames_released, 1);
    h.flush(0);
    assert_eq!(h.counters(0).frames_released, 0);
    assert!(!h
        .m
        .allocated
        .borrow()
        .contains(&frame(old.unwrap().0.as_u64())));
    h.assert_clean();
}

/// A protect that loosens (read-only to writable) is written in place; a
/// vCPU whose TLB still holds the stricter translation faults on a write,
/// and the fault hook drops it (by flushing, when the vCPU has the change
/// queued itself; by one invlpg otherwise), so the write goes through.
#[test]
fn a_stale_stricter_translation_is_fixed_by_the_fault_hook() {
    let env = Env::new();
    let mut h = Harness::new(&env, 2, 4, true);
    h.map_anon(0, wva(0), 1, RO).unwrap();
    assert_eq!(h.touch(0, wpage(0)).map(|s| s.1), Some(RO));
    assert_eq!(h.touch(1, wpage(0)).map(|s| s.1), Some(RO));
    h.protect(0, wva(0), 1, RW).unwrap();
    // cpu0 has the change queued: its fault flushes.
    assert_eq!(h.write(0, wpage(0)).map(|s| s.1), Some(RW));
    assert_eq!(h.counters(0).fault_flushes(), 1);
    // cpu1's TLB was shot down by that flush: no fault at all.
    assert_eq!(h.write(1, wpage(0)).map(|s| s.1), Some(RW));
    h.protect(1, wva(0), 1, RO).unwrap();
    h.flush(1);
    assert_eq!(h.touch(0, wpage(0)).map(|s| s.1), Some(RO));
    h.protect(1, wva(0), 1, RW).unwrap();
    // cpu0 has nothing queued: no flush, no invlpg (the fault itself
    // dropped the stale translation); the change is cpu1's.
    let before = h.counters(0);
    assert_eq!(h.write(0, wpage(0)).map(|s| s.1), Some(RW));
    let c = h.counters(0).since(&before);
    assert_eq!((c.flushes_total(), c.invlpg), (0, 0));
    // cpu0 has something else queued: its own invlpg, then its flush.
    h.flush(1);
    h.protect(1, wva(0), 1, RO).unwrap();
    h.flush(1);
    assert_eq!(h.touch(0, wpage(0)).map(|s| s.1), Some(RO));
    h.protect(1, wva(0), 1, RW).unwrap();
    h.map(0, wva(3), &[device(0)], RO).unwrap();
    h.unmap(0, wva(3), 1).unwrap();
    assert_eq!(h.write(0, wpage(0)).map(|s| s.1), Some(RW));
    assert_eq!(h.counters(0).fault_flushes(), 2);
    // A write to a read-only page is a real fault: not retried.
    h.flush(1);
    h.protect(1, wva(0), 1, RO).unwrap();
    h.flush(1);
    assert_eq!(h.write(0, wpage(0)), None);
    assert!(
        !h.on(0, |m| m.fault(VirtAddr::new(wva(9)), 0)),
        "nothing mapped there"
    );
    assert!(
        !h.on(0, |m| m.fault(VirtAddr::new(0x1000), 0)),
        "outside the window"
    );
    // A reserved-bit fault is never retried, whatever the entry says.
    h.flush(1);
    h.protect(1, wva(0), 1, RW).unwrap();
    h.flush(1);
    assert!(
        !h.on(0, |m| m.fault(VirtAddr::new(wva(0)), 2 | 8)),
        "reserved bit"
    );
    assert!(
        h.on(0, |m| m.fault(VirtAddr::new(wva(0)), 2)),
        "an allowed write"
    );
    h.assert_clean();
}

// ----------------------------------------------------------------- errors

/// Runs `f` and checks that it failed with `want` and left the tables,
/// the queues and the frame pool as they were.
fn refused(
    h: &mut Harness<'_>,
    pages: &[Page],
    want: Error,
    f: impl FnOnce(&mut Harness<'_>) -> Result<(), Error>,
) {
    let tables: Vec<Option<Seen>> = pages.iter().map(|&p| h.tables(p)).collect();
    let lens: Vec<usize> = h.queues.iter().map(|q| q.len()).collect();
    let free = h.m.free.borrow().len();
    assert_eq!(f(h), Err(want));
    let after: Vec<Option<Seen>> = pages.iter().map(|&p| h.tables(p)).collect();
    assert_eq!(after, tables, "{want:?} changed the tables");
    assert_eq!(
        h.queues.iter().map(|q| q.len()).collect::<Vec<_>>(),
        lens,
        "{want:?} queued"
    );
    assert_eq!(h.m.free.borrow().len(), free, "{want:?} kept frames");
}

#[test]
fn range_errors_name_the_bad_argument() {
    let env = Env::new();
    let mut h = Harness::new(&env, 1, 4, true);
    let pages: Vec<Page> = (0..4).map(wpage).collect();
    let end = WINDOW_BASE + WINDOW_SIZE;
    for (va, n, want) in [
        (wva(0) + 8, 1, Error::Unaligned(wva(0) + 8)),
        (wva(0), 0, Error::ZeroLength),
        (
            WINDOW_BASE - 4096,
            1,
            Error::OutsideWindow {
                addr: WINDOW_BASE - 4096,
                pages: 1,
            },
        ),
        (
            end - 4096,
            2,
            Error::OutsideWindow {
                addr: end - 4096,
                pages: 2,
            },
        ),
        (
            wva(0),
            u64::MAX / 2,
            Error::OutsideWindow {
                addr: wva(0),
                pages: u64::MAX / 2,
            },
        ),
    ] {
        refused(&mut h, &pages, want, |h| h.map_anon(0, va, n, RW));
        refused(&mut h, &pages, want, |h| h.unmap(0, va, n));
        refused(&mut h, &pages, want, |h| h.protect(0, va, n, RO));
    }
    assert!(Error::Unaligned(8)
        .to_string()
        .contains("0x8 is not 4 KiB-aligned"));
    assert!(Error::OutsideWindow { addr: 1, pages: 2 }
        .to_string()
        .contains("outside the mm window"));
    // The last page of the window and the first work.
    h.map_anon(0, end - 4096, 1, RO).unwrap();
    h.map_anon(0, WINDOW_BASE, 1, RO).unwrap();
    assert!(h.tables(page(end - 4096)).is_some() && h.tables(wpage(0)).is_some());
    h.assert_clean();
}

#[test]
fn mapping_errors_change_nothing() {
    let env = Env::new();
    let mut h = Harness::new(&env, 2, 8, true);
    let pages: Vec<Page> = (0..8).map(wpage).collect();
    h.map_anon(0, wva(2), 2, RW).unwrap();
    let e = Error::WriteAndExecute;
    refused(&mut h, &pages, e, |h| h.map_anon(0, wva(4), 1, WX));
    refused(&mut h, &pages, e, |h| h.map(0, wva(4), &[device(0)], WX));
    refused(&mut h, &pages, e, |h| h.protect(0, wva(2), 2, WX));
    assert!(e.to_string().contains("writable and executable"));
    refused(&mut h, &pages, Error::ZeroLength, |h| {
        h.map(0, wva(4), &[], RO)
    });
    // A run that ends on a mapped page: nothing of it is mapped.
    let e = Error::AlreadyMapped(VirtAddr::new(wva(2)));
    refused(&mut h, &pages, e, |h| h.map_anon(0, wva(0), 3, RW));
    refused(&mut h, &pages, e, |h| {
        h.map(0, wva(1), &[device(0), device(1)], RW)
    });
    // A run that starts mapped and runs past it: nothing is unmapped.
    let e = Error::NotMapped(VirtAddr::new(wva(4)));
    refused(&mut h, &pages, e, |h| h.unmap(0, wva(2), 3));
    refused(&mut h, &pages, e, |h| h.protect(1, wva(3), 2, RO));
    // Where no table exists yet.
    let far = wva(10 * 512);
    refused(
        &mut h,
        &[page(far)],
        Error::NotMapped(VirtAddr::new(far)),
        |h| h.unmap(0, far, 1),
    );
    // Out of frames midway: every frame given back, nothing mapped.
    h.m.fail_after.set(Some(2));
    refused(&mut h, &pages, Error::OutOfFrames, |h| {
        h.map_anon(0, wva(4), 4, RW)
    });
    assert!(Error::OutOfFrames
        .to_string()
        .contains("out of physical frames"));
    h.assert_clean();
}

/// A batch sees its own changes: a page mapped earlier in the same
/// unflushed batch is mapped, one unmapped earlier is not.
#[test]
fn a_batch_sees_its_own_changes() {
    let env = Env::new();
    let mut h = Harness::new(&env, 1, 8, true);
    h.enter(0);
    h.map_anon(0, wva(0), 4, RW).unwrap();
    assert_eq!(
        h.map_anon(0, wva(2), 4, RW),
        Err(Error::AlreadyMapped(VirtAddr::new(wva(2))))
    );
    h.unmap(0, wva(0), 2).unwrap();
    assert_eq!(
        h.unmap(0, wva(0), 1),
        Err(Error::NotMapped(VirtAddr::new(wva(0))))
    );
    h.protect(0, wva(2), 2, RO).unwrap();
    h.map_anon(0, wva(0), 2, RO).unwrap();
    h.leave(0).unwrap();
    for i in 0..4 {
        assert_eq!(h.tables(wpage(i)).map(|s| s.1), Some(RO), "page {i}");
    }
    h.assert_clean();
}

#[test]
fn out_of_tables_midway_changes_no_page() {
    let env = Env::new();
    let mut h = Harness::new(&env, 1, 8, true);
    // A run over two fresh 2 MiB slots needs their leaf tables (the first
    // also the levels above); with room for only part of them the call
    // fails and no page is mapped.
    let (next, _) = h.m.tables.get();
    h.m.tables.set((next, next + 3 * 4096));
    let va = WINDOW_BASE + TWO_MIB - 4096;
    let pages = [page(va), page(va + 4096)];
    refused(&mut h, &pages, Error::OutOfTables, |h| {
        h.map_anon(0, va, 2, RW)
    });
    assert!(Error::OutOfTables.to_string().contains("page tables"));
    h.m.tables.set((h.m.tables.get().0, DATA_BASE));
    h.map_anon(0, va, 2, RW).unwrap();
    h.assert_clean();
}

/// Corrupt page tables met while creating a slot's leaf table are
/// reported, and change nothing.
#[test]
fn corrupt_tables_are_reported() {
    let env = Env::new();
    let mut h = Harness::new(&env, 1, 2, true);
    h.map_anon(0, WINDOW_BASE, 1, RO).unwrap();
    let made = h.window.table_pages();
    // Point the window's PDPT entry for its second GiB outside fake RAM.
    let pml4e = RAM_BASE + u64::from(VirtAddr::new(WINDOW_BASE).p4_index()) * 8;
    let pdpt = env.ram.read_u64(PhysAddr::new(pml4e)).unwrap() & !0xfff;
    let slot = pdpt + 8;
    let fresh = WINDOW_BASE + (1 << 30);
    env.ram.write(slot, &(0x8000_0000u64 | 3).to_le_bytes());
    let e = Error::Corrupt(crate::paging::Error::TableUnreachable(PhysAddr::new(
        0x8000_0000,
    )));
    refused(&mut h, &[page(fresh), wpage(0)], e, |h| {
        h.map_anon(0, fresh, 1, RO)
    });
    assert!(e.to_string().contains("corrupt") && e.to_string().contains("0x80000000"));
    assert_eq!(h.window.table_pages(), made);
    env.ram.write(slot, &0u64.to_le_bytes());
    h.map_anon(0, fresh, 1, RO).unwrap();
    h.assert_clean();
}

/// A lock this vCPU already holds is a bug that would spin forever: it
/// panics, naming the table.
#[test]
#[should_panic(expected = "which it already holds")]
fn taking_a_held_table_lock_again_panics() {
    let env = Env::new();
    let mut h = Harness::new(&env, 1, 2, true);
    h.map_anon(0, wva(0), 1, RO).unwrap();
    env.slots[0].lock_for_test(0);
    let _ = h.unmap(0, wva(0), 1);
}

// ------------------------------------------------ races inside a flush

/// An [`Mmu`] whose first shootdown runs another vCPU's call, before or
/// after the remote invalidation: the interleavings a real machine allows
/// while one vCPU waits for its acknowledgements, which calls made one
/// after another never reach.
struct Racing<'a, 'e> {
    inner: CpuMmu<'a, 'e>,
    before: bool,
    call: Option<Box<dyn FnOnce() + 'a>>,
}

impl Racing<'_, '_> {
    fn fire(&mut self) {
        if let Some(call) = self.call.take() {
            call();
        }
    }
}

impl Mmu for Racing<'_, '_> {
    fn invlpg(&mut self, page: Page) {
        self.inner.invlpg(page);
    }
    fn flush_all(&mut self) {
        self.inner.flush_all();
    }
    fn shootdown(&mut self, inv: &Invalidation) -> u32 {
        if self.before {
            self.fire();
        }
        let n = self.inner.shootdown(inv);
        if !self.before {
            self.fire();
        }
        n
    }
    fn write_cr(&mut self, reg: Cr, value: u64) {
        self.inner.write_cr(reg, value);
    }
}

/// Flushes `owner`'s queue; during its shootdown `other` runs `call`,
/// which gets `other`'s view of the mm and the machine (for the accesses of
/// a third vCPU meanwhile).
fn race(
    h: &mut Harness<'_>,
    owner: usize,
    other: usize,
    before: bool,
    call: impl FnOnce(
        &mut Mm<'_, '_, FakeRam, Pool<'_, '_>, CpuMmu<'_, '_>>,
        &Machine<'_>,
    ) -> Result<(), Error>,
) -> Result<(), Error> {
    let result = Cell::new(None);
    let queue = RefCell::new(std::mem::take(&mut h.queues[other]));
    {
        let (m, window) = (&h.m, &h.window);
        let (queue, result) = (&queue, &result);
        let call = move || {
            let mut frames = Pool { m };
            let mut mmu = CpuMmu { m, me: other };
            let mut mm = Mm {
                window,
                queue: &mut queue.borrow_mut(),
                me: other,
                frames: &mut frames,
                mmu: &mut mmu,
            };
            result.set(Some(call(&mut mm, m)));
        };
        let mut frames = Pool { m };
        let mut mmu = Racing {
            inner: CpuMmu { m, me: owner },
            before,
            call: Some(Box::new(call)),
        };
        let mut mm = Mm {
            window,
            queue: &mut h.queues[owner],
            me: owner,
            frames: &mut frames,
            mmu: &mut mmu,
        };
        mm.flush(Trigger::Explicit);
    }
    h.queues[other] = queue.into_inner();
    result
        .take()
        .expect("the shootdown ran the other vCPU's call")
}

/// cpu0 unmaps a page cpu2 caches and flushes; while cpu0 waits for its
/// shootdown, cpu1 maps the page again (its own frame or a device's). Once
/// cpu1's map returns nobody may reach the old frame through the new
/// mapping, and the old frame is released exactly once.
#[test]
fn a_remap_inside_the_owners_shootdown() {
    for (anon, before) in [(true, false), (true, true), (false, false), (false, true)] {
        let env = Env::new();
        let mut h = Harness::new(&env, 3, 8, true);
        // An owned frame leaves a RELEASE mark, a device frame a
        // generation mark: both kinds must hold.
        if anon {
            h.map_anon(0, wva(0), 1, RW).unwrap();
        } else {
            h.map(0, wva(0), &[device(1)], RW).unwrap();
        }
        let old = h.tables(wpage(0));
        assert_eq!(h.touch(2, wpage(0)), old);
        h.unmap(0, wva(0), 1).unwrap();
        race(&mut h, 0, 1, before, |mm, m| {
            let r = if anon {
                mm.map_anon(VirtAddr::new(wva(0)), 1, RO)
            } else {
                // SAFETY: a device frame, never read through fake RAM.
                unsafe { mm.map(VirtAddr::new(wva(0)), &[device(7)], RO) }
            };
            // cpu1's map has returned, cpu0 still waits: every vCPU that
            // uses the page now must see the new mapping.
            let now = m.walk(wpage(0));
            for c in 0..3 {
                let t = m.tlbs.borrow()[c].get(wpage(0)).or(now);
                if t != now {
                    m.violation(format!(
                        "cpu{c} reaches {t:?} after cpu1's map returned ({now:?})"
                    ));
                }
            }
            r
        })
        .unwrap();
        let new = h.tables(wpage(0));
        assert_ne!(new, old);
        for c in 0..3 {
            assert_eq!(
                h.touch(c, wpage(0)),
                new,
                "anon {anon} before {before}: cpu{c}"
            );
        }
        h.assert_clean();
    }
}

/// cpu0 unmaps a page; cpu1 takes the mark over and maps it again; while
/// cpu0 waits for its shootdown, cpu2 caches the page and cpu1 unmaps it.
/// No frame may go back while cpu2's TLB reaches it.
#[test]
fn an_unmap_between_the_owners_shootdown_and_its_releases() {
    for before in [false, true] {
        let env = Env::new();
        let mut h = Harness::new(&env, 3, 8, true);
        h.map_anon(0, wva(0), 1, RW).unwrap();
        h.unmap(0, wva(0), 1).unwrap();
        h.map_anon(1, wva(0), 1, RW).unwrap();
        assert_eq!(h.queues[0].len(), 1);
        race(&mut h, 0, 1, before, |mm, m| {
            // cpu2 uses the page, then cpu1 unmaps it.
            if let Some((s, size)) = m.walk_sized(wpage(0)) {
                m.tlbs.borrow_mut()[2].insert(wpage(0), s, size);
            }
            mm.unmap(VirtAddr::new(wva(0)), 1)
        })
        .unwrap();
        h.flush(1);
        h.assert_clean();
    }
}

/// A vCPU's flush generation wraps after 2^40 flushes: an old mark may then
/// look live again, which costs one needless flush and nothing else.
#[test]
fn the_flush_generation_wraps_harmlessly() {
    let env = Env::new();
    let mut h = Harness::new(&env, 2, 8, true);
    h.map(0, wva(0), &[device(1)], RO).unwrap();
    h.unmap(0, wva(0), 1).unwrap();
    h.flush(0);
    env.flushed[0].store(1 + (1u64 << 40) - 1, std::sync::atomic::Ordering::Relaxed);
    h.map(1, wva(0), &[device(2)], RO).unwrap();
    assert_eq!(h.counters(1).flushes[Trigger::Remap as usize], 1);
    for i in 0..4 {
        h.unmap(1, wva(0), 1).unwrap();
        h.map(0, wva(0), &[device(3 + i)], RO).unwrap();
        assert_eq!(h.touch(1, wpage(0)), seen(device(3 + i), RO, false));
        h.unmap(0, wva(0), 1).unwrap();
        h.flush(0);
        h.map(1, wva(0), &[device(9)], RO).unwrap();
    }
    h.assert_clean();
}

// ------------------------------------------------------------ 2 MiB pages

fn lva(slot: u64) -> u64 {
    WINDOW_BASE + slot * TWO_MIB
}

/// A 2 MiB page reads back at every offset on every vCPU, is one entry
/// and one invalidation, and its frame goes back only after the shootdown.
#[test]
fn a_large_page_maps_reads_back_and_unmaps() {
    let env = Env::new();
    let mut h = Harness::new(&env, 2, 4, true);
    h.map_anon_2m(0, lva(8), 2, RW).unwrap();
    let f = h.tables(page(lva(8))).unwrap().0;
    assert_eq!(f.as_u64() % TWO_MIB, 0);
    assert!(h.m.allocated_2m.borrow().contains(&frame_2m(f.as_u64())));
    for off in [0, 4096, TWO_MIB - 4096] {
        let p = page(lva(8) + off);
        assert_eq!(h.touch(1, p), Some((f + off, RW, true)), "offset {off:#x}");
    }
    let t = h
        .on(0, |m| m.translate(VirtAddr::new(lva(9) + 0x1234)))
        .unwrap();
    assert_eq!(
        (t.size, t.owned, t.phys.as_u64() & (TWO_MIB - 1)),
        (PageSize::Large, true, 0x1234)
    );
    let c = h.counters(0);
    assert_eq!((c.pte_writes, c.pte_writes_2m), (2, 2));
    h.unmap_2m(0, lva(8), 2).unwrap();
    assert_eq!(h.tables(page(lva(8) + 4096)), None, "in place");
    assert!(
        h.touch(1, page(lva(8))).is_some(),
        "cpu1's TLB still holds it until the flush"
    );
    assert!(h.m.allocated_2m.borrow().contains(&frame_2m(f.as_u64())));
    let before = h.counters(0);
    h.flush(0);
    let c = h.counters(0).since(&before);
    assert_eq!(
        (c.invlpg, c.full_flushes, c.shootdowns),
        (2, 0, 1),
        "one invlpg per 2 MiB page"
    );
    assert_eq!((c.frames_released, c.frames_released_2m), (2, 2));
    assert_eq!(h.touch(1, page(lva(8) + 8192)), None);
    assert!(h.m.allocated_2m.borrow().is_empty());
    h.assert_clean();
}

/// A 2 MiB page counts once against the invlpg ceiling.
#[test]
fn large_pages_count_once_against_the_ceiling() {
    let env = Env::new();
    let mut h = Harness::new(&env, 1, 0, true);
    let n = INVLPG_CEILING as u64 + 1;
    let frames: Vec<PhysFrame<Size2MiB>> = (0..n).map(device_2m).collect();
    h.map_2m(0, lva(64), &frames, RO).unwrap();
    h.protect_2m(0, lva(64), n - 1, RW).unwrap();
    let before = h.counters(0);
    h.flush(0);
    let c = h.counters(0).since(&before);
    assert_eq!((c.invlpg, c.full_flushes), (n - 1, 0));
    h.protect_2m(0, lva(64), n, RO).unwrap();
    let before = h.counters(0);
    h.flush(0);
    assert_eq!(h.counters(0).since(&before).full_flushes, 1);
    h.assert_clean();
}

/// A slot keeps the page size of its first mapping: the other size is
/// refused there, naming the address and what is there, and nothing
/// changes; misaligned 2 MiB calls are refused too.
#[test]
fn the_wrong_page_size_is_refused() {
    let env = Env::new();
    let mut h = Harness::new(&env, 1, 8, true);
    h.map_anon(0, lva(2), 1, RW).unwrap();
    h.map_anon_2m(0, lva(3), 1, RW).unwrap();
    let pages = [
        page(lva(2)),
        page(lva(3)),
        page(lva(3) + 4096),
        page(lva(4)),
    ];
    let small = |a| Error::WrongPageSize {
        addr: VirtAddr::new(a),
        here: PageSize::Small,
    };
    let large = |a| Error::WrongPageSize {
        addr: VirtAddr::new(a),
        here: PageSize::Large,
    };
    // 2 MiB calls where 4 KiB tables are.
    refused(&mut h, &pages, small(lva(2)), |h| {
        h.map_anon_2m(0, lva(2), 1, RW)
    });
    refused(&mut h, &pages, small(lva(2)), |h| {
        h.map_2m(0, lva(2), &[device_2m(0)], RO)
    });
    refused(&mut h, &pages, small(lva(2)), |h| h.unmap_2m(0, lva(2), 1));
    refused(&mut h, &pages, small(lva(2)), |h| {
        h.protect_2m(0, lva(2), 2, RO)
    });
    // 4 KiB calls inside a 2 MiB page: they would split it.
    let inner = lva(3) + 5 * 4096;
    refused(&mut h, &pages, large(inner), |h| h.unmap(0, inner, 1));
    refused(&mut h, &pages, large(inner), |h| h.protect(0, inner, 1, RO));
    refused(&mut h, &pages, large(inner), |h| {
        h.map_anon(0, inner, 1, RW)
    });
    refused(&mut h, &pages, large(inner), |h| {
        h.map(0, inner, &[device(0)], RO)
    });
    // A 4 KiB range that runs from 4 KiB pages into the 2 MiB one.
    let edge = lva(3) - 4096;
    refused(&mut h, &pages, large(lva(3)), |h| {
        h.unmap(0, lva(2), 512 + 1)
    });
    refused(&mut h, &[page(edge)], large(lva(3)), |h| {
        h.map_anon(0, edge, 2, RW)
    });
    // A 2 MiB range that runs from the 2 MiB page into 4 KiB tables.
    refused(&mut h, &pages, small(lva(2)), |h| {
        h.map_anon_2m(0, lva(1), 2, RW)
    });
    let e = small(lva(5));
    assert!(e.to_string().contains("holds 4 KiB pages"), "{e}");
    // Alignment, length, window.
    refused(&mut h, &pages, Error::Unaligned2M(lva(4) + 4096), |h| {
        h.map_anon_2m(0, lva(4) + 4096, 1, RW)
    });
    refused(&mut h, &pages, Error::ZeroLength, |h| {
        h.unmap_2m(0, lva(4), 0)
    });
    let end = WINDOW_BASE + WINDOW_SIZE;
    refused(
        &mut h,
        &pages,
        Error::OutsideWindow {
            addr: end,
            pages: 1,
        },
        |h| h.map_anon_2m(0, end, 1, RW),
    );
    refused(
        &mut h,
        &pages,
        Error::NotMapped(VirtAddr::new(lva(4))),
        |h| h.unmap_2m(0, lva(3), 2),
    );
    refused(
        &mut h,
        &pages,
        Error::AlreadyMapped(VirtAddr::new(lva(3))),
        |h| h.map_anon_2m(0, lva(3), 1, RO),
    );
    assert!(Error::Unaligned2M(4096)
        .to_string()
        .contains("2 MiB-aligned"));
    h.assert_clean();
}

/// Out of 2 MiB frames midway: every frame given back, nothing mapped; a
/// pending 2 MiB release is flushed first (Reuse) to get one back.
#[test]
fn large_frames_run_out_cleanly_and_are_reused() {
    let env = Env::new();
    let mut h = Harness::new(&env, 1, 0, true);
    let pages: Vec<Page> = (0..8).map(|t| page(lva(16 + t))).collect();
    refused(&mut h, &pages, Error::OutOfFrames, |h| {
        h.map_anon_2m(0, lva(16), LARGE_FRAMES + 1, RW)
    });
    h.map_anon_2m(0, lva(16), LARGE_FRAMES, RW).unwrap();
    h.unmap_2m(0, lva(16), 1).unwrap();
    h.map_anon_2m(0, lva(24), 1, RW).unwrap();
    assert_eq!(h.counters(0).flushes[Trigger::Reuse as usize], 1);
    h.assert_clean();
}

/// A 2 MiB page unmapped on cpu0 (cpu1 still caches it) and mapped again
/// on cpu2 before cpu0 flushes: cpu2 takes the pending unmap over, every
/// vCPU sees the new frame, the old one is released once.
#[test]
fn a_large_remap_takes_the_pending_unmap_over() {
    let env = Env::new();
    let mut h = Harness::new(&env, 3, 0, true);
    h.map_anon_2m(0, lva(30), 1, RW).unwrap();
    let p = page(lva(30) + 77 * 4096);
    let old = h.touch(1, p);
    h.unmap_2m(0, lva(30), 1).unwrap();
    h.map_anon_2m(2, lva(30), 1, RO).unwrap();
    let new = h.tables(p);
    assert_ne!(old, new);
    for cpu in 0..3 {
        assert_eq!(h.touch(cpu, p), new, "cpu{cpu}");
    }
    assert_eq!(h.counters(2).frames_released_2m, 1);
    h.flush(0);
    assert_eq!(h.counters(0).frames_released_2m, 0);
    h.assert_clean();
}

// --------------------------------------------------- the random property

/// xorshift64 (Marsaglia 2003): reproducible and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Map,
    MapAnon,
    Unmap,
    Protect,
}

/// The plain reference model: what each page should map, which mm-owned
/// frames are in use or waiting for release (and on whose flush), and which
/// pages a vCPU's flush still owes an invalidation.
#[derive(Default)]
struct Model {
    pages: HashMap<Page, (PhysFrame, Prot, bool)>,
    owned: HashSet<PhysFrame>,
    releasing: HashMap<PhysFrame, usize>,
    /// The 2 MiB pages, by their base page; their frames, as above.
    large: HashMap<Page, (PhysFrame<Size2MiB>, Prot, bool)>,
    owned_2m: HashSet<PhysFrame<Size2MiB>>,
    releasing_2m: HashMap<PhysFrame<Size2MiB>, usize>,
    /// Translation unit (a 4 KiB page, or a 2 MiB page's base) → the
    /// vCPUs whose flush will invalidate it.
    owed: HashMap<Page, HashSet<usize>>,
}

impl Model {
    fn expect(&self, p: Page) -> Option<Seen> {
        if in_large_region(p) {
            let b = base_2m(p);
            return self.large.get(&b).map(|&(f, prot, owned)| {
                (
                    f.start_address() + (p.start_address() - b.start_address()),
                    prot,
                    owned,
                )
            });
        }
        self.pages
            .get(&p)
            .map(|&(f, prot, owned)| (f.start_address(), prot, owned))
    }

    /// Whether an invalidation of `p`'s translation is still owed.
    fn owes(&self, p: Page) -> bool {
        let unit = if in_large_region(p) { base_2m(p) } else { p };
        self.owed.contains_key(&unit)
    }

    fn released_2m(&mut self, f: PhysFrame<Size2MiB>) -> Option<String> {
        if self.releasing_2m.remove(&f).is_some() {
            return None;
        }
        self.owned_2m
            .contains(&f)
            .then(|| format!("released {f:?}, which is still mapped"))
    }

    /// A frame came back to the pool: one an unmap freed (done), or one a
    /// call took and gave back unused. A frame still mapped is an error.
    fn released(&mut self, f: PhysFrame) -> Option<String> {
        if self.releasing.remove(&f).is_some() {
            return None;
        }
        self.owned
            .contains(&f)
            .then(|| format!("released {f:?}, which is still mapped"))
    }

    fn flushed(&mut self, cpu: usize) {
        self.owed.retain(|_, cpus| {
            cpus.remove(&cpu);
            !cpus.is_empty()
        });
    }
}

struct Report {
    ops: u64,
    refused: u64,
    touches: u64,
    counters: Counters,
    mismatches: Vec<String>,
}

/// The pages the random test works on: 1,600 pages over four 2 MiB slots,
/// one of them across a 1 GiB boundary, shared by every vCPU.
fn test_pages() -> Vec<Page> {
    let mut v = Vec::new();
    for (base, n) in [
        (WINDOW_BASE + TWO_MIB - 300 * 4096, 600),
        (WINDOW_BASE + (1 << 30) - 256 * 4096, 512),
        (WINDOW_BASE + 9 * TWO_MIB, 488),
    ] {
        v.extend((0..n).map(|i| page(base + i * 4096)));
    }
    v
}

/// The slots of the random test's 2 MiB pages: 8 of them, far from the
/// 4 KiB pages.
const LARGE_FIRST_SLOT: u64 = 40;
const LARGE_SLOTS: u64 = 8;

fn in_large_region(p: Page) -> bool {
    let slot = (p.start_address().as_u64() - WINDOW_BASE) / TWO_MIB;
    (LARGE_FIRST_SLOT..LARGE_FIRST_SLOT + LARGE_SLOTS).contains(&slot)
}

fn large_va(slot: u64) -> u64 {
    WINDOW_BASE + (LARGE_FIRST_SLOT + slot) * TWO_MIB
}

/// `lazy`: the batched backend (queues in MMU lazy mode, batch scopes
/// opened and closed); else the immediate one (no lazy mode at all).
fn run_random(
    seed: u64,
    ops_wanted: u64,
    cpus: usize,
    shootdowns_work: bool,
    lazy: bool,
) -> Report {
    let env = Env::new();
    // Fewer frames than pages: the pool runs dry, so reuse flushes and
    // OutOfFrames happen.
    let mut h = Harness::new(&env, cpus, 700, lazy);
    h.m.shootdowns_work.set(shootdowns_work);
    let mut rng = Rng(seed);
    let mut model = Model::default();
    let mut r = Report {
        ops: 0,
        refused: 0,
        touches: 0,
        counters: Counters::ZERO,
        mismatches: Vec::new(),
    };
    let all = test_pages();
    let index: HashMap<Page, usize> = all.iter().enumerate().map(|(i, &p)| (p, i)).collect();
    // Ops left in each vCPU's open batch, and how deep it nested; whether
    // each vCPU runs batched (lazy) or immediate.
    let mut batch: Vec<Option<(u64, u32)>> = vec![None; cpus];

    let mut flushes_seen = vec![0u64; cpus];
    let mut step = 0u64;
    macro_rules! mismatch {
        ($($t:tt)*) => {
            if r.mismatches.len() < 20 {
                r.mismatches.push(format!("step {step}: {}", format!($($t)*)));
            }
        };
    }

    while r.ops < ops_wanted && r.mismatches.len() < 20 {
        step += 1;
        let cpu = rng.below(cpus as u64) as usize;
        let roll = rng.below(100);
        if roll < 18 {
            // Touch any page through `cpu`, reading or writing.
            r.touches += 1;
            let p = if rng.chance(25) {
                page(large_va(rng.below(LARGE_SLOTS)) + rng.below(512) * 4096)
            } else {
                all[rng.below(all.len() as u64) as usize]
            };
            let write = rng.chance(50);
            let (got, want) = if write {
                // A write goes through only where the model says writable.
                (h.write(cpu, p), model.expect(p).filter(|s| s.1.write))
            } else {
                (h.touch(cpu, p), model.expect(p))
            };
            // Only an owed invalidation excuses a difference.
            if !model.owes(p) && got != want {
                mismatch!(
                    "cpu{cpu} {} {p:?}: {got:?}, model {want:?}",
                    if write { "write" } else { "read" }
                );
            }
        } else if (20..30).contains(&roll) {
            large_op(&mut h, &mut model, &mut rng, cpu, &mut r, step);
            if let Some((left, _)) = batch[cpu].as_mut() {
                *left = left.saturating_sub(1).max(1);
            }
        } else if lazy && roll == 30 && rng.chance(10) {
            // A burst: one-page protects at scattered mapped pages, in one
            // batch, as records that cannot coalesce: the ring fills and
            // flushes (Trigger::Full) and goes on.
            h.enter(cpu);
            for _ in 0..400 {
                let start = rng.below(all.len() as u64) as usize;
                let Some(i) = (0..all.len())
                    .map(|k| (start + k) % all.len())
                    .find(|&i| model.pages.contains_key(&all[i]))
                else {
                    break;
                };
                let p = all[i];
                // A change every time, so every call takes a record.
                let prot = if model.pages[&p].1 == RO { RW } else { RO };
                let before = h.counters(cpu).flushes_total();
                if let Err(e) = h.protect(cpu, p.start_address().as_u64(), 1, prot) {
                    mismatch!("cpu{cpu} burst protect {p:?}: {e:?}");
                }
                if h.counters(cpu).flushes_total() != before {
                    model.flushed(cpu);
                }
                let e = model.pages.get_mut(&p).expect("mapped");
                if e.1 != prot {
                    model.owed.entry(p).or_default().insert(cpu);
                }
                e.1 = prot;
                r.ops += 1;
            }
            if h.leave(cpu).is_err() {
                mismatch!("burst leave refused");
            }
        } else if (18..20).contains(&roll) {
            h.flush(cpu);
        } else {
            if lazy && batch[cpu].is_none() && rng.chance(60) {
                let size = 1 + rng.below(300);
                let depth = if rng.chance(20) { 2 } else { 1 };
                for _ in 0..depth {
                    h.enter(cpu);
                }
                batch[cpu] = Some((size, depth));
            }
            r.ops += 1;
            let kind = match rng.below(100) {
                0..=24 => Op::Map,
                25..=49 => Op::MapAnon,
                50..=77 => Op::Unmap,
                _ => Op::Protect,
            };
            let prot = match rng.below(100) {
                0..=39 => RW,
                40..=69 => RO,
                70..=97 => Prot::READ_EXEC,
                _ => WX,
            };
            // Where: usually a run that suits the op, anywhere in the
            // shared pages (so vCPUs meet each other's pending changes);
            // rarely a bad address.
            let (va, pages) = if rng.chance(1) {
                let va = match rng.below(4) {
                    0 => all[0].start_address().as_u64() + 1,
                    1 => WINDOW_BASE + WINDOW_SIZE - 4096,
                    2 => WINDOW_BASE - 4096,
                    _ => all[0].start_address().as_u64(),
                };
                (va, rng.below(3))
            } else {
                let want_mapped = matches!(kind, Op::Unmap | Op::Protect);
                let suits = |i: usize| model.pages.contains_key(&all[i]) == want_mapped;
                let mut start = rng.below(all.len() as u64) as usize;
                let aim = rng.chance(85);
                if aim {
                    start = (0..all.len())
                        .map(|k| (start + k) % all.len())
                        .find(|&i| suits(i))
                        .unwrap_or(start);
                }
                let max = (if rng.chance(10) { 64 } else { 8 }).min(all.len() - start);
                let mut len = 1 + rng.below(max as u64) as usize;
                // Stay inside one contiguous part of `all`.
                let first = all[start].start_address().as_u64();
                len = (0..len)
                    .take_while(|&k| {
                        start + k < all.len()
                            && all[start + k].start_address().as_u64() == first + k as u64 * 4096
                    })
                    .count()
                    .max(1);
                if aim {
                    len = (0..len).take_while(|&k| suits(start + k)).count().max(1);
                }
                (first, len as u64)
            };
            let op_pages: Vec<Page> = if va % 4096 == 0 && pages <= 64 {
                (0..pages)
                    .map(|i| va + i * 4096)
                    .filter(|a| (WINDOW_BASE..WINDOW_BASE + WINDOW_SIZE).contains(a))
                    .map(page)
                    .collect()
            } else {
                Vec::new()
            };
            // What the model says must happen, in the order the mm checks.
            let pending_here: u64 = model.releasing.values().filter(|&&c| c == cpu).count() as u64;
            let want: Result<(), Error> = (|| {
                if va % 4096 != 0 {
                    return Err(Error::Unaligned(va));
                }
                if pages == 0 {
                    return Err(Error::ZeroLength);
                }
                if va < WINDOW_BASE || va + pages * 4096 > WINDOW_BASE + WINDOW_SIZE {
                    return Err(Error::OutsideWindow { addr: va, pages });
                }
                if kind != Op::Unmap && prot.write && prot.exec {
                    return Err(Error::WriteAndExecute);
                }
                for &p in &op_pages {
                    let mapped = model.pages.contains_key(&p);
                    match kind {
                        Op::Map | Op::MapAnon if mapped => {
                            return Err(Error::AlreadyMapped(p.start_address()))
                        }
                        Op::Unmap | Op::Protect if !mapped => {
                            return Err(Error::NotMapped(p.start_address()))
                        }
                        _ => {}
                    }
                }
                let free = h.m.free.borrow().len() as u64;
                if kind == Op::MapAnon && pages > free && pages > free + pending_here {
                    return Err(Error::OutOfFrames);
                }
                Ok(())
            })();
            let before: Vec<Option<Seen>> = op_pages.iter().map(|&p| h.tables(p)).collect();
            let device_frames: Vec<PhysFrame> = (0..pages.min(64))
                .map(|_| device(rng.below(4096)))
                .collect();
            let flushes_before = h.counters(cpu).flushes_total();
            let got = match kind {
                Op::Map => h.map(cpu, va, &device_frames, prot),
                Op::MapAnon => h.map_anon(cpu, va, pages, prot),
                Op::Unmap => h.unmap(cpu, va, pages),
                Op::Protect => h.protect(cpu, va, pages, prot),
            };
            if got != want {
                mismatch!("cpu{cpu} {kind:?} {va:#x}+{pages} {prot:?}: {got:?}, model {want:?}");
            }
            // A flush inside the call (reuse, remap, full, unbatched)
            // settled what this vCPU owed before the call's own changes;
            // the releases it made are checked below.
            let flushed_inside = h.counters(cpu).flushes_total() != flushes_before;
            // Frames a flush inside the call released may be the very ones
            // the call then handed out (a reuse flush); the others are
            // checked once the model knows what the call unmapped.
            let mut late = Vec::new();
            for f in std::mem::take(&mut *h.m.released.borrow_mut()) {
                if model.releasing.remove(&f).is_none() {
                    late.push(f);
                }
            }
            if flushed_inside {
                model.flushed(cpu);
            }
            match got {
                Ok(()) => {
                    for (i, &p) in op_pages.iter().enumerate() {
                        match kind {
                            Op::Map => {
                                model.pages.insert(p, (device_frames[i], prot, false));
                            }
                            Op::MapAnon => {
                                let Some(s) = h.tables(p) else {
                                    mismatch!("map_anon {p:?} left it unmapped");
                                    continue;
                                };
                                let f = frame(s.0.as_u64());
                                if model.owned.contains(&f) || model.releasing.contains_key(&f) {
                                    mismatch!("{f:?} handed out while in use");
                                }
                                model.owned.insert(f);
                                model.pages.insert(p, (f, prot, true));
                            }
                            Op::Unmap => {
                                let (f, _, owned) = model.pages.remove(&p).expect("mapped");
                                if owned {
                                    model.owned.remove(&f);
                                    model.releasing.insert(f, cpu);
                                }
                                model.owed.entry(p).or_default().insert(cpu);
                            }
                            Op::Protect => {
                                let e = model.pages.get_mut(&p).expect("mapped");
                                if e.1 != prot {
                                    model.owed.entry(p).or_default().insert(cpu);
                                }
                                e.1 = prot;
                                if i == 0 {
                                    // Another vCPU uses the page at once:
                                    // through a translation cached before
                                    // the change, a write may fault
                                    // (Trigger::Fault) and must then go
                                    // through.
                                    let c = rng.below(cpus as u64) as usize;
                                    let got = if prot.write {
                                        h.write(c, p)
                                    } else {
                                        h.touch(c, p)
                                    };
                                    if got.is_none() {
                                        mismatch!("cpu{c} could not use {p:?} right after cpu{cpu}'s protect to {prot:?}");
                                    }
                                }
                            }
                        }
                        // Entries are written in place: the tables say
                        // what the model says, at once.
                        if h.tables(p) != model.expect(p) {
                            mismatch!(
                                "{kind:?} {p:?}: tables {:?}, model {:?}",
                                h.tables(p),
                                model.expect(p)
                            );
                        }
                    }
                    if matches!(kind, Op::Map | Op::MapAnon) {
                        // A map is visible at once, on every vCPU.
                        for &p in &op_pages {
                            for c in 0..cpus {
                                let t = h.touch(c, p);
                                if t != model.expect(p) {
                                    mismatch!("cpu{c} sees {p:?} as {t:?} right after cpu{cpu}'s map, model {:?}", model.expect(p));
                                }
                            }
                        }
                    }
                    if kind == Op::Unmap && !h.queues[cpu].in_lazy_mmu() {
                        // The immediate path flushed before returning.
                        model.flushed(cpu);
                    }
                }
                Err(e) => {
                    r.refused += 1;
                    let after: Vec<Option<Seen>> = op_pages.iter().map(|&p| h.tables(p)).collect();
                    if after != before {
                        mismatch!("refused {kind:?} {va:#x}+{pages} ({e:?}) changed the tables");
                    }
                }
            }
            for f in late {
                if let Some(m) = model.released(f) {
                    mismatch!("{m}");
                }
            }
            if let Some((left, depth)) = batch[cpu].as_mut() {
                *left -= 1;
                if *depth == 2 && *left % 50 == 0 {
                    // The inner leave flushes mid-batch.
                    if h.leave(cpu).is_err() {
                        mismatch!("inner leave refused");
                    }
                    *depth = 1;
                }
                if *left == 0 {
                    for _ in 0..*depth {
                        if h.leave(cpu).is_err() {
                            mismatch!("leave refused");
                        }
                    }
                    batch[cpu] = None;
                }
            }
        }

        // Any flush by a vCPU: what it owed is settled, its releases are
        // accounted for.
        for f in std::mem::take(&mut *h.m.released.borrow_mut()) {
            if let Some(m) = model.released(f) {
                mismatch!("{m}");
            }
        }
        for f in std::mem::take(&mut *h.m.released_2m.borrow_mut()) {
            if let Some(m) = model.released_2m(f) {
                mismatch!("{m}");
            }
        }
        for (c, seen) in flushes_seen.iter_mut().enumerate() {
            let total = h.counters(c).flushes_total();
            if total != *seen {
                *seen = total;
                model.flushed(c);
            }
        }
        for v in std::mem::take(&mut *h.m.violations.borrow_mut()) {
            mismatch!("machine: {v}");
        }
        // No TLB anywhere may differ from the tables for a page that no
        // vCPU's flush still owes an invalidation.
        if step.is_multiple_of(16) {
            let tlbs = h.m.tlbs.borrow();
            for (c, tlb) in tlbs.iter().enumerate() {
                for (&p, &s) in tlb.map.iter().chain(&tlb.large) {
                    if !model.owed.contains_key(&p) && h.m.walk(p) != Some(s) {
                        mismatch!(
                            "cpu{c}'s TLB holds {p:?} as {s:?}, tables {:?}, and no flush is owed (page {:?})",
                            h.m.walk(p),
                            index.get(&p)
                        );
                    }
                }
            }
        }
    }
    // Drain everything and compare the whole window once more.
    for (cpu, b) in batch.iter().enumerate() {
        if let Some((_, depth)) = *b {
            for _ in 0..depth {
                let _ = h.leave(cpu);
            }
        }
        h.flush(cpu);
    }
    for f in std::mem::take(&mut *h.m.released.borrow_mut()) {
        if let Some(m) = model.released(f) {
            mismatch!("{m}");
        }
    }
    for &p in &all {
        for c in 0..cpus {
            let t = h.touch(c, p);
            if t != model.expect(p) {
                mismatch!(
                    "final: cpu{c} sees {p:?} as {t:?}, model {:?}",
                    model.expect(p)
                );
            }
        }
    }
    for f in std::mem::take(&mut *h.m.released_2m.borrow_mut()) {
        if let Some(m) = model.released_2m(f) {
            mismatch!("{m}");
        }
    }
    for slot in 0..LARGE_SLOTS {
        let p = page(large_va(slot) + 4096 * (slot * 61 % 512));
        for c in 0..cpus {
            let t = h.touch(c, p);
            if t != model.expect(p) {
                mismatch!(
                    "final: cpu{c} sees {p:?} as {t:?}, model {:?}",
                    model.expect(p)
                );
            }
        }
    }
    if !model.releasing.is_empty() || !model.releasing_2m.is_empty() {
        mismatch!(
            "final: {} frames and {} 2 MiB frames never released",
            model.releasing.len(),
            model.releasing_2m.len()
        );
    }
    let leaked_2m = h.m.allocated_2m.borrow().len() as u64;
    let owned_2m = model.large.values().filter(|v| v.2).count() as u64;
    if leaked_2m != owned_2m {
        mismatch!("final: {leaked_2m} 2 MiB frames allocated, {owned_2m} mapped");
    }
    let leaked = h.m.allocated.borrow().len() as u64;
    let owned_mapped = model.pages.values().filter(|v| v.2).count() as u64;
    if leaked != owned_mapped {
        mismatch!("final: {leaked} frames allocated, {owned_mapped} mapped");
    }
    for v in std::mem::take(&mut *h.m.violations.borrow_mut()) {
        mismatch!("machine: {v}");
    }
    for c in 0..cpus {
        r.counters.add(&h.counters(c));
    }
    r
}

/// One 2 MiB operation of the random test, checked against the model: a
/// map, map_anon, unmap or protect of 1 to 3 large pages in the large
/// region; sometimes a 4 KiB call inside a large page, or a 2 MiB call over
/// the 4 KiB pages, which must be refused with `WrongPageSize` and change
/// nothing.
fn large_op(
    h: &mut Harness<'_>,
    model: &mut Model,
    rng: &mut Rng,
    cpu: usize,
    r: &mut Report,
    step: u64,
) {
    r.ops += 1;
    let mut mismatch = |m: String| {
        if r.mismatches.len() < 20 {
            r.mismatches.push(format!("step {step}: {m}"));
        }
    };
    let roll = rng.below(100);
    if roll < 8 {
        // A 4 KiB call inside a mapped large page: refused, nothing changed.
        let Some((&b, _)) = model
            .large
            .iter()
            .nth(rng.below(model.large.len().max(1) as u64) as usize)
        else {
            return;
        };
        let va = b.start_address().as_u64() + 4096 * rng.below(512);
        let before = h.tables(page(va));
        let got = match roll % 4 {
            0 => h.unmap(cpu, va, 1),
            1 => h.protect(cpu, va, 2, RO),
            2 => h.map_anon(cpu, va, 1, RW),
            _ => h.map(cpu, va, &[device(1)], RO),
        };
        let want = Err(Error::WrongPageSize {
            addr: VirtAddr::new(va),
            here: PageSize::Large,
        });
        if got != want || h.tables(page(va)) != before {
            mismatch(format!(
                "cpu{cpu} 4 KiB call in the 2 MiB page at {va:#x}: {got:?}, want {want:?}"
            ));
        }
        r.refused += 1;
        return;
    }
    if roll < 11 {
        // A 2 MiB call over the 4 KiB pages' first slot, which holds a leaf
        // table from the test's first map on: refused.
        let va = WINDOW_BASE + TWO_MIB;
        if h.window.table_pages() == 0 {
            return;
        }
        let got = h.map_anon_2m(cpu, va, 1, RW);
        let want = Err(Error::WrongPageSize {
            addr: VirtAddr::new(va),
            here: PageSize::Small,
        });
        if got != want && !matches!(got, Err(Error::AlreadyMapped(_))) {
            mismatch(format!(
                "cpu{cpu} 2 MiB call over 4 KiB pages: {got:?}, want {want:?}"
            ));
        }
        r.refused += 1;
        return;
    }
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum K {
        Map,
        MapAnon,
        Unmap,
        Protect,
    }
    let kind = match rng.below(4) {
        0 => K::Map,
        1 => K::MapAnon,
        2 => K::Unmap,
        _ => K::Protect,
    };
    let want_mapped = matches!(kind, K::Unmap | K::Protect);
    let count = 1 + rng.below(3).min(LARGE_SLOTS - 1);
    let mut first = rng.below(LARGE_SLOTS - count + 1);
    if rng.chance(80) {
        // Aim at a run that suits the op.
        if let Some(f) = (0..=LARGE_SLOTS - count).find(|&f| {
            (f..f + count).all(|t| model.large.contains_key(&page(large_va(t))) == want_mapped)
        }) {
            first = f;
        }
    }
    let prot = if rng.chance(50) { RW } else { RO };
    let va = large_va(first) + if rng.chance(1) { 4096 } else { 0 };
    let bases: Vec<Page> = (first..first + count).map(|t| page(large_va(t))).collect();
    let free = h.m.free_2m.borrow().len() as u64;
    let pending = model.releasing_2m.values().filter(|&&c| c == cpu).count() as u64;
    let want: Result<(), Error> = (|| {
        if !va.is_multiple_of(TWO_MIB) {
            return Err(Error::Unaligned2M(va));
        }
        for &b in &bases {
            match (kind, model.large.contains_key(&b)) {
                (K::Map | K::MapAnon, true) => return Err(Error::AlreadyMapped(b.start_address())),
                (K::Unmap | K::Protect, false) => return Err(Error::NotMapped(b.start_address())),
                _ => {}
            }
        }
        if kind == K::MapAnon && count > free + pending {
            return Err(Error::OutOfFrames);
        }
        Ok(())
    })();
    let before: Vec<Option<Seen>> = bases.iter().map(|&b| h.tables(b)).collect();
    let devices: Vec<PhysFrame<Size2MiB>> = (0..count).map(|_| device_2m(rng.below(64))).collect();
    let flushes_before = h.counters(cpu).flushes_total();
    let got = match kind {
        K::Map => h.map_2m(cpu, va, &devices, prot),
        K::MapAnon => h.map_anon_2m(cpu, va, count, prot),
        K::Unmap => h.unmap_2m(cpu, va, count),
        K::Protect => h.protect_2m(cpu, va, count, prot),
    };
    if got != want {
        mismatch(format!(
            "cpu{cpu} {kind:?} 2 MiB {va:#x}+{count} {prot:?}: {got:?}, model {want:?}"
        ));
    }
    // Frames a flush inside the call released (a reuse or a remap).
    let mut late = Vec::new();
    for f in std::mem::take(&mut *h.m.released_2m.borrow_mut()) {
        if model.releasing_2m.remove(&f).is_none() {
            late.push(f);
        }
    }
    if h.counters(cpu).flushes_total() != flushes_before {
        model.flushed(cpu);
    }
    if got.is_err() {
        r.refused += 1;
        let after: Vec<Option<Seen>> = bases.iter().map(|&b| h.tables(b)).collect();
        if after != before {
            mismatch(format!(
                "refused 2 MiB {kind:?} at {va:#x} changed the tables"
            ));
        }
    } else {
        for (i, &b) in bases.iter().enumerate() {
            match kind {
                K::Map => {
                    model.large.insert(b, (devices[i], prot, false));
                }
                K::MapAnon => {
                    let Some(s) = h.tables(b) else {
                        mismatch(format!("map_anon_2m left {b:?} unmapped"));
                        continue;
                    };
                    let f = frame_2m(s.0.as_u64());
                    if model.owned_2m.contains(&f) || model.releasing_2m.contains_key(&f) {
                        mismatch(format!("{f:?} handed out while in use"));
                    }
                    model.owned_2m.insert(f);
                    model.large.insert(b, (f, prot, true));
                }
                K::Unmap => {
                    let (f, _, owned) = model.large.remove(&b).expect("mapped");
                    if owned {
                        model.owned_2m.remove(&f);
                        model.releasing_2m.insert(f, cpu);
                    }
                    model.owed.entry(b).or_default().insert(cpu);
                }
                K::Protect => {
                    let e = model.large.get_mut(&b).expect("mapped");
                    if e.1 != prot {
                        model.owed.entry(b).or_default().insert(cpu);
                    }
                    e.1 = prot;
                }
            }
            if h.tables(b) != model.expect(b) {
                mismatch(format!(
                    "2 MiB {kind:?} {b:?}: tables {:?}, model {:?}",
                    h.tables(b),
                    model.expect(b)
                ));
            }
        }
        if matches!(kind, K::Map | K::MapAnon) {
            // Visible at once, on every vCPU, at any offset.
            for &b in &bases {
                let p = page(b.start_address().as_u64() + 4096 * rng.below(512));
                for c in 0..h.queues.len() {
                    let t = h.touch(c, p);
                    if t != model.expect(p) {
                        mismatch(format!(
                            "cpu{c} sees {p:?} as {t:?} right after cpu{cpu}'s 2 MiB map"
                        ));
                    }
                }
            }
        }
        if kind == K::Unmap && !h.queues[cpu].in_lazy_mmu() {
            model.flushed(cpu);
        }
    }
    for f in late {
        if let Some(m) = model.released_2m(f) {
            mismatch(m);
        }
    }
}

#[test]
fn random_batches_on_three_cpus_match_the_model() {
    let t = std::time::Instant::now();
    let mut total = Counters::ZERO;
    let (mut ops, mut refused, mut touches) = (0, 0, 0);
    for (seed, cpus, want) in [
        (0x2545_f491_4f6c_dd1d, 3, 60_000),
        (0x9e37_79b9_7f4a_7c15, 2, 45_000),
    ] {
        let r = run_random(seed, want, cpus, true, true);
        assert!(
            r.mismatches.is_empty(),
            "seed {seed:#x}: {} mismatches: {:#?}",
            r.mismatches.len(),
            r.mismatches
        );
        ops += r.ops;
        refused += r.refused;
        touches += r.touches;
        total.add(&r.counters);
    }
    let by_trigger: Vec<String> = Trigger::ALL
        .iter()
        .map(|t| format!("{}={}", t.name(), total.flushes[*t as usize]))
        .collect();
    eprintln!(
        "mm random: {ops} ops ({refused} refused), {touches} touches, {} flushes ({}), \
         {} pte writes, {} invlpg, {} full flushes, {} shootdowns, {} frames released, \
         0 mismatches, {:.1?}",
        total.flushes_total(),
        by_trigger.join(" "),
        total.pte_writes,
        total.invlpg,
        total.full_flushes,
        total.shootdowns,
        total.frames_released,
        t.elapsed()
    );
    assert!(ops >= 100_000);
    // The run must reach the interesting states, or it proves little.
    for t in [
        Trigger::Full,
        Trigger::Leave,
        Trigger::Explicit,
        Trigger::Fault,
        Trigger::Reuse,
        Trigger::Remap,
    ] {
        assert!(total.flushes[t as usize] > 0, "no {} flush", t.name());
    }
    assert!(total.full_flushes > 0 && total.invlpg > 0 && total.shootdowns > 0);
    assert!(refused > ops / 50, "too few refused ops: {refused}");
    assert!(
        total.pte_writes_2m > 1000 && total.frames_released_2m > 100,
        "too few 2 MiB pages: {} entries written, {} frames released",
        total.pte_writes_2m,
        total.frames_released_2m
    );
}

/// The immediate backend (every queue out of lazy mode) under the same
/// model: every unmap is flushed before it returns.
#[test]
fn random_immediate_matches_the_model() {
    let r = run_random(0x1234_5678_9abc_def1, 20_000, 3, true, false);
    assert!(r.mismatches.is_empty(), "{:#?}", r.mismatches);
    assert!(r.counters.flushes[Trigger::Unbatched as usize] > 0);
    assert_eq!(r.counters.flushes[Trigger::Leave as usize], 0);
}

/// The property test can fail: with the shootdown gone, it finds stale
/// TLB entries.
#[test]
fn random_batches_catch_a_missing_shootdown() {
    let r = run_random(0x2545_f491_4f6c_dd1d, 5_000, 3, false, true);
    assert!(!r.mismatches.is_empty());
    assert!(
        r.mismatches.iter().any(|m| m.contains("TLB")),
        "{:#?}",
        r.mismatches
    );
}

//! 2 MiB pages in the window: `map_2m`, `map_anon_2m`, `unmap_2m` and
//! `protect_2m`, batched exactly like 4 KiB ones.
//!
//! A 2 MiB page is one page-directory entry: its [`TableSlot`] points at
//! that entry instead of a leaf table, and takes the same lock. Entries are
//! written in place, an unmap leaves the same kind of mark (the MMU ignores
//! a not-present directory entry's other bits as it does a leaf's), a remap
//! over a live mark takes it over, and the frames are released only after
//! the shootdown. A 2 MiB page is one `invlpg` and counts once against
//! [`crate::queue::INVLPG_CEILING`].
//!
//! Each 2 MiB slot keeps the page size of its first mapping: leaf tables
//! are never freed, and a 2 MiB mapping is never split. A 4 KiB call inside
//! a 2 MiB page, a 2 MiB call where 4 KiB tables exist, and a range that
//! mixes the two are refused with [`Error::WrongPageSize`] before anything
//! changes. Splitting would need a leaf table filled from the large entry
//! and one more invalidation round; refusing keeps every call
//! all-or-nothing and tells the caller exactly what is there.

use super::*;

/// 2 MiB of the window.
const LARGE: u64 = 2 << 20;

/// A run of 2 MiB pages, as slot numbers.
#[derive(Debug, Clone, Copy)]
struct LargeRun {
    first: usize,
    count: usize,
}

impl LargeRun {
    fn of(va: VirtAddr, count: u64) -> Result<LargeRun, Error> {
        let a = va.as_u64();
        if !a.is_multiple_of(LARGE) {
            return Err(Error::Unaligned2M(a));
        }
        if count == 0 {
            return Err(Error::ZeroLength);
        }
        let slots = WINDOW_TABLES as u64;
        let inside =
            a >= WINDOW_BASE && count <= slots && (a - WINDOW_BASE) / LARGE <= slots - count;
        if !inside {
            return Err(Error::OutsideWindow {
                addr: a,
                pages: count,
            });
        }
        Ok(LargeRun {
            first: ((a - WINDOW_BASE) / LARGE) as usize,
            count: count as usize,
        })
    }

    fn end(self) -> usize {
        self.first + self.count
    }

    fn va(t: usize) -> VirtAddr {
        VirtAddr::new_truncate(WINDOW_BASE + t as u64 * LARGE)
    }

    fn start(self) -> Page {
        Page::containing_address(Self::va(self.first))
    }
}

impl<M: PhysMemory> Window<'_, M> {
    /// A pointer to the directory entry of the 2 MiB page at `va`, for the
    /// benchmark's floor. `None` unless the slot holds 2 MiB pages.
    ///
    /// # Safety
    /// As [`Window::raw_entry`]: the caller must leave the entry as the mm
    /// left it (or empty) before any other mm call touches the page.
    pub unsafe fn raw_large_entry(&self, va: VirtAddr) -> Option<*const AtomicU64> {
        let a = va.as_u64();
        if !(WINDOW_BASE..WINDOW_BASE + WINDOW_SIZE).contains(&a) {
            return None;
        }
        self.slots[((a - WINDOW_BASE) / LARGE) as usize]
            .large()
            .map(|e| e as *const AtomicU64)
    }

    /// Makes the run's slots hold 2 MiB pages, finding (and creating the
    /// tables above) their page-directory entries. A slot with a leaf
    /// table is `WrongPageSize`.
    #[inline]
    fn ensure_large(&self, run: LargeRun, alloc: &mut dyn TableAlloc) -> Result<(), Error> {
        match (run.first..run.end()).find(|&t| self.slots[t].size() != Some(PageSize::Large)) {
            None => Ok(()),
            Some(from) => self.make_large(run, from, alloc),
        }
    }

    #[cold]
    fn make_large(
        &self,
        run: LargeRun,
        from: usize,
        alloc: &mut dyn TableAlloc,
    ) -> Result<(), Error> {
        let mut made = self.grow.lock();
        for t in from..run.end() {
            match self.slots[t].size() {
                Some(PageSize::Large) => continue,
                Some(PageSize::Small) => {
                    return Err(Error::WrongPageSize {
                        addr: LargeRun::va(t),
                        here: PageSize::Small,
                    })
                }
                None => {}
            }
            let mut counting = Counting {
                inner: &mut *alloc,
                made: 0,
            };
            // SAFETY: `Window::new`'s contract: `root` is live and only this
            // window changes the window's part of it; `grow` serialises it.
            let mut tables = unsafe { PageTables::new(self.mem, self.root) };
            let r = tables.pd_entry(
                Page::containing_address(LargeRun::va(t)),
                Some(&mut counting),
            );
            *made += counting.made;
            let pa = r.map_err(|e| match e {
                paging::Error::OutOfTables(_) => Error::OutOfTables,
                e => Error::Corrupt(e),
            })?;
            let p = self
                .mem
                .ptr(pa, 8)
                .ok_or(Error::Corrupt(paging::Error::TableUnreachable(pa)))?;
            // SAFETY: an aligned entry of a page directory of this window's
            // tables, which live as long as the window.
            let pde = unsafe { &*(p as *const AtomicU64) };
            if pde.load(Ordering::Acquire) & PRESENT != 0 {
                // Something this window did not make: a leaf table, or a
                // large page that is not ours.
                return Err(Error::Corrupt(paging::Error::HugePageInTheWay(
                    LargeRun::va(t),
                )));
            }
            self.slots[t]
                .table
                .store(p as u64 | SLOT_LARGE, Ordering::Release);
        }
        Ok(())
    }

    /// The page-directory entries of the run's slots (which hold 2 MiB
    /// pages), for `f(slot number, entry)` in order, stopping at an error.
    #[inline]
    fn each_large<E>(
        &self,
        run: LargeRun,
        mut f: impl FnMut(usize, &AtomicU64) -> Result<(), E>,
    ) -> Result<(), E> {
        for t in run.first..run.end() {
            f(
                t,
                self.slots[t]
                    .large()
                    .expect("the run's slots hold 2 MiB pages"),
            )?;
        }
        Ok(())
    }
}

/// The 2 MiB entry for `frame` with `flags` (PRESENT and the size bit in).
fn pde(frame: u64, flags: u64) -> u64 {
    frame | flags | F::HUGE_PAGE.bits()
}

impl<M: PhysMemory, Fr: Frames, U: Mmu> Mm<'_, '_, M, Fr, U> {
    /// Maps the 2 MiB `frames` (the caller's: unmap does not free them) at
    /// the 2 MiB-aligned `va`.
    ///
    /// # Safety
    /// As [`Mm::map`]: the frames must be memory the caller owns for as
    /// long as they are mapped.
    pub unsafe fn map_2m(
        &mut self,
        va: VirtAddr,
        frames: &[PhysFrame<Size2MiB>],
        prot: Prot,
    ) -> Result<(), Error> {
        let run = LargeRun::of(va, frames.len() as u64)?;
        let flags = prot.flags()?.bits();
        self.check_large_unmapped(run)?;
        self.window.ensure_large(run, &mut *self.frames)?;
        self.install_large(run, |i| pde(frames[i].start_address().as_u64(), flags))?;
        self.settle();
        Ok(())
    }

    /// Maps `count` fresh zeroed 2 MiB frames at the 2 MiB-aligned `va`;
    /// unmap gives them back.
    pub fn map_anon_2m(&mut self, va: VirtAddr, count: u64, prot: Prot) -> Result<(), Error> {
        let run = LargeRun::of(va, count)?;
        let flags = (prot.flags()? | OWNED).bits();
        self.check_large_unmapped(run)?;
        self.window.ensure_large(run, &mut *self.frames)?;
        // Every frame before the first entry changes; chained through
        // their own first word, like map_anon's.
        let mut chain = FrameChain::new(self.window.mem);
        for _ in 0..count {
            match self.alloc_frame_2m() {
                Some(f) => chain.push(PhysFrame::containing_address(f.start_address())),
                None => {
                    chain.free_all_2m(&mut *self.frames);
                    return Err(Error::OutOfFrames);
                }
            }
        }
        let r = self.install_large(run, |_| {
            pde(
                chain
                    .pop()
                    .expect("one frame per page")
                    .start_address()
                    .as_u64(),
                flags,
            )
        });
        if r.is_err() {
            chain.free_all_2m(&mut *self.frames);
        }
        r?;
        self.settle();
        Ok(())
    }

    fn alloc_frame_2m(&mut self) -> Option<PhysFrame<Size2MiB>> {
        if let Some(f) = self.frames.alloc_zeroed_2m() {
            return Some(f);
        }
        if self.queue.has_pending_releases() {
            self.flush(Trigger::Reuse);
            if let Some(f) = self.frames.alloc_zeroed_2m() {
                return Some(f);
            }
        }
        if self.frames.reclaim() {
            return self.frames.alloc_zeroed_2m();
        }
        None
    }

    /// Refuses, before anything is taken, a run that meets 4 KiB tables
    /// or a mapped 2 MiB page (checked again under the locks).
    fn check_large_unmapped(&self, run: LargeRun) -> Result<(), Error> {
        for t in run.first..run.end() {
            let slot = &self.window.slots[t];
            match (slot.size(), slot.large()) {
                (Some(PageSize::Small), _) => {
                    return Err(Error::WrongPageSize {
                        addr: LargeRun::va(t),
                        here: PageSize::Small,
                    })
                }
                (_, Some(pde)) if pde.load(Ordering::Relaxed) & PRESENT != 0 => {
                    return Err(Error::AlreadyMapped(LargeRun::va(t)))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Stores `value(i)` into the run's directory entries, which must all
    /// be unmapped: all or none. A live mark is taken over and flushed
    /// first, as for 4 KiB pages.
    fn install_large(
        &mut self,
        run: LargeRun,
        mut value: impl FnMut(usize) -> u64,
    ) -> Result<(), Error> {
        let w = self.window;
        loop {
            w.lock(run.first, run.end(), self.me);
            let mut live = false;
            let checked = w.each_large(run, |t, pde| {
                let e = pde.load(Ordering::Relaxed);
                if e & PRESENT != 0 {
                    return Err(Error::AlreadyMapped(LargeRun::va(t)));
                }
                live |= e & MARK != 0 && w.live_mark(e).is_some();
                Ok(())
            });
            if let Err(e) = checked {
                w.unlock(run.first, run.end());
                return Err(e);
            }
            if live {
                self.take_over_large(run);
                continue;
            }
            let mut i = 0;
            let _ = w.each_large(run, |_, pde| {
                pde.store(value(i), Ordering::Release);
                i += 1;
                Ok::<(), ()>(())
            });
            self.count_large_writes(run.count as u64, run);
            w.unlock(run.first, run.end());
            return Ok(());
        }
    }

    fn count_large_writes(&mut self, n: u64, run: LargeRun) {
        self.count_writes(n, run.first, run.end());
        self.queue.counters_mut().pte_writes_2m += n;
    }

    /// As `take_over`, for 2 MiB entries; the run's locks are held.
    #[cold]
    fn take_over_large(&mut self, run: LargeRun) {
        let w = self.window;
        let open = self.open_gen();
        let who = (self.me as u64) << CPU_SHIFT;
        let mut release = false;
        let _ = w.each_large(run, |_, pde| {
            let e = pde.load(Ordering::Relaxed);
            if let Some(owner) = w.live_mark(e) {
                release |= e & RELEASE != 0;
                if owner != self.me {
                    let kept = if e & RELEASE != 0 {
                        e & (RELEASE | ADDR_MASK_2M)
                    } else {
                        (open & GEN_MASK) << GEN_SHIFT
                    };
                    pde.store(MARK | kept | who, Ordering::Relaxed);
                }
            }
            Ok::<(), ()>(())
        });
        w.unlock(run.first, run.end());
        self.queue.push(Entry::Invalidate {
            start: run.start(),
            count: run.count as u32,
            release,
            large: true,
        });
        self.flush(Trigger::Remap);
    }

    /// Locks a run of mapped 2 MiB pages: `NotMapped` for the first that
    /// is not, `WrongPageSize` for 4 KiB tables in the way. On error
    /// nothing stays locked.
    fn lock_mapped_large(&self, run: LargeRun) -> Result<(), Error> {
        let w = self.window;
        // The first slot that is wrong, in address order (checked again
        // under the locks, for the entries).
        for t in run.first..run.end() {
            match (w.slots[t].size(), w.slots[t].large()) {
                (Some(PageSize::Small), _) => {
                    return Err(Error::WrongPageSize {
                        addr: LargeRun::va(t),
                        here: PageSize::Small,
                    })
                }
                (_, Some(pde)) if pde.load(Ordering::Relaxed) & PRESENT != 0 => {}
                _ => return Err(Error::NotMapped(LargeRun::va(t))),
            }
        }
        w.lock(run.first, run.end(), self.me);
        let checked = w.each_large(run, |t, pde| {
            if pde.load(Ordering::Relaxed) & PRESENT == 0 {
                return Err(Error::NotMapped(LargeRun::va(t)));
            }
            Ok(())
        });
        if let Err(e) = checked {
            w.unlock(run.first, run.end());
            return Err(e);
        }
        Ok(())
    }

    /// Unmaps `count` 2 MiB pages at `va`, releasing the frames
    /// map_anon_2m gave them once no TLB can reach them.
    pub fn unmap_2m(&mut self, va: VirtAddr, count: u64) -> Result<(), Error> {
        let run = LargeRun::of(va, count)?;
        let w = self.window;
        self.lock_mapped_large(run)?;
        let who = (self.me as u64) << CPU_SHIFT;
        let plain = MARK | ((self.open_gen() & GEN_MASK) << GEN_SHIFT) | who;
        let mut release = false;
        let _ = w.each_large(run, |_, pde| {
            let old = pde.load(Ordering::Relaxed);
            let mark = if old & OWNED.bits() != 0 {
                release = true;
                MARK | RELEASE | (old & ADDR_MASK_2M) | who
            } else {
                plain
            };
            pde.store(mark, Ordering::Release);
            Ok::<(), ()>(())
        });
        self.count_large_writes(count, run);
        w.unlock(run.first, run.end());
        self.queue.push(Entry::Invalidate {
            start: run.start(),
            count: count as u32,
            release,
            large: true,
        });
        self.settle();
        Ok(())
    }

    /// Changes the protection of `count` mapped 2 MiB pages at `va`.
    pub fn protect_2m(&mut self, va: VirtAddr, count: u64, prot: Prot) -> Result<(), Error> {
        let run = LargeRun::of(va, count)?;
        let flags = prot.flags()?.bits() | F::HUGE_PAGE.bits();
        let w = self.window;
        self.lock_mapped_large(run)?;
        let mut changed = 0;
        let _ = w.each_large(run, |_, pde| {
            changed += reprotect(pde, flags);
            Ok::<(), ()>(())
        });
        if changed > 0 {
            self.count_large_writes(changed, run);
        }
        w.unlock(run.first, run.end());
        if changed > 0 {
            self.queue.push(Entry::Invalidate {
                start: run.start(),
                count: count as u32,
                release: false,
                large: true,
            });
        }
        self.settle();
        Ok(())
    }
}

impl<M: PhysMemory> FrameChain<'_, M> {
    fn free_all_2m(&mut self, frames: &mut impl Frames) {
        while let Some(f) = self.pop() {
            frames.free_2m(PhysFrame::containing_address(f.start_address()));
        }
    }
}

//! A ticket spin lock for the few singletons that every CPU shares (the
//! console, the frame allocator, the mm state), and a set-once cell.
//!
//! Single-owner state uses `AtomicRefCell` (a second borrow is a bug and
//! panics). State that several CPUs really contend for needs to wait instead,
//! and a ticket lock serves them in arrival order, so no CPU starves while
//! another logs in a loop. The kernel wraps this with interrupts masked
//! (`IrqLock` in the kernel); this module stays hardware-free.
//!
//! A lock bug must be a clear failure, not a silent hang with every vCPU
//! spinning. Once the kernel has said which CPU runs and what time it is
//! ([`install`]), each lock records its holder, and:
//! - taking a lock this CPU already holds panics, naming the lock;
//! - waiting longer than [`LOCK_TIMEOUT_SECONDS`] panics, naming the lock
//!   and the CPU that holds it.
//!
//! Both go through the panic handler, which never takes a lock. Without
//! [`install`] (host tests of other modules, the first instructions of a
//! boot) a lock is a plain ticket lock.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicPtr, AtomicU32, Ordering};

/// How long a CPU may wait for a lock before the run fails. Longer than
/// the kernel's 2 s acknowledgement watchdog (smp.rs), which names the
/// exact CPU when a holder waits for a shootdown nobody answers; far
/// shorter than any test's timeout.
pub const LOCK_TIMEOUT_SECONDS: u64 = 5;

/// Spins between two looks at the clock: the clock is only read once a
/// lock is really contended.
const SPINS_PER_CLOCK_READ: u32 = 256;

/// What the locks need from the platform, installed once by the kernel.
pub struct Platform {
    /// This CPU's index. Must be cheap and must not take a lock.
    pub cpu: fn() -> u32,
    /// A clock that only moves forward (the TSC).
    pub ticks: fn() -> u64,
    /// Its rate; 0 while unknown (before calibration): no timeout then.
    pub ticks_per_second: fn() -> u64,
}

static PLATFORM: AtomicPtr<Platform> = AtomicPtr::new(core::ptr::null_mut());

/// Turns on holder tracking and the timeout for every lock. Call once, as
/// soon as "which CPU am I" works.
pub fn install(platform: &'static Platform) {
    PLATFORM.store(
        platform as *const Platform as *mut Platform,
        Ordering::Release,
    );
}

fn platform() -> Option<&'static Platform> {
    let p = PLATFORM.load(Ordering::Acquire);
    // SAFETY: only `install` stores here, and it stores a `&'static`.
    unsafe { p.cast_const().as_ref() }
}

/// `holder` holds CPU index + 1; this means nobody (or nobody known).
const NO_HOLDER: u32 = 0;

pub struct SpinLock<T> {
    next: AtomicU32,
    serving: AtomicU32,
    /// Who holds the lock (CPU index + 1), or [`NO_HOLDER`]. Written only by
    /// the holder, so a CPU that reads its own index here really holds it.
    holder: AtomicU32,
    name: Option<&'static str>,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out access to `value` to one holder at a time, so
// sharing the lock between threads only ever moves `T` between them.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: as above; owning the lock is owning `T`.
unsafe impl<T: Send> Send for SpinLock<T> {}

impl<T> SpinLock<T> {
    /// A lock that its reports name by the type it guards.
    pub const fn new(value: T) -> Self {
        Self::build(None, value)
    }

    /// A lock that its reports call `name`.
    pub const fn named(name: &'static str, value: T) -> Self {
        Self::build(Some(name), value)
    }

    const fn build(name: Option<&'static str>, value: T) -> Self {
        SpinLock {
            next: AtomicU32::new(0),
            serving: AtomicU32::new(0),
            holder: AtomicU32::new(NO_HOLDER),
            name,
            value: UnsafeCell::new(value),
        }
    }

    /// The name reports use: the one given, or the guarded type's.
    pub fn name(&self) -> &'static str {
        self.name.unwrap_or(core::any::type_name::<T>())
    }

    /// Waits for the lock in arrival order.
    ///
    /// # Panics
    /// If this CPU already holds it, or after [`LOCK_TIMEOUT_SECONDS`] of
    /// waiting (once [`install`] has run).
    pub fn lock(&self) -> SpinGuard<'_, T> {
        self.lock_in(platform())
    }

    fn lock_in(&self, env: Option<&Platform>) -> SpinGuard<'_, T> {
        let me = env.map(|p| (p.cpu)());
        self.refuse_own(me);
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        let mut wait = Wait::new(env);
        while self.serving.load(Ordering::Acquire) != ticket {
            wait.spin(self, me);
        }
        self.acquired(me)
    }

    /// Waits for the lock without queueing for it, calling `between` on
    /// every spin. For a waiter that must keep serving requests (IPIs) while
    /// it waits, where holding a ticket would be unsafe: a request handler
    /// that took this lock would queue behind its own CPU's ticket.
    ///
    /// # Panics
    /// As [`lock`](Self::lock).
    pub fn lock_polling(&self, between: impl FnMut()) -> SpinGuard<'_, T> {
        self.lock_polling_in(platform(), between)
    }

    fn lock_polling_in(
        &self,
        env: Option<&Platform>,
        mut between: impl FnMut(),
    ) -> SpinGuard<'_, T> {
        let me = env.map(|p| (p.cpu)());
        self.refuse_own(me);
        let mut wait = Wait::new(env);
        loop {
            if let Some(g) = self.try_acquire(me) {
                return g;
            }
            between();
            wait.spin(self, me);
        }
    }

    /// Takes the lock only if nobody holds or waits for it. Never panics,
    /// not even when this CPU holds the lock, so that a last-resort path
    /// (power-off after a panic) can use it.
    pub fn try_lock(&self) -> Option<SpinGuard<'_, T>> {
        self.try_acquire(platform().map(|p| (p.cpu)()))
    }

    fn try_acquire(&self, me: Option<u32>) -> Option<SpinGuard<'_, T>> {
        let serving = self.serving.load(Ordering::Relaxed);
        self.next
            .compare_exchange(
                serving,
                serving.wrapping_add(1),
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .ok()
            .map(|_| self.acquired(me))
    }

    fn acquired(&self, me: Option<u32>) -> SpinGuard<'_, T> {
        let holder = me.map_or(NO_HOLDER, |c| c.wrapping_add(1));
        self.holder.store(holder, Ordering::Relaxed);
        SpinGuard { lock: self }
    }

    fn refuse_own(&self, me: Option<u32>) {
        if let Some(me) = me {
            if self.holder.load(Ordering::Relaxed) == me.wrapping_add(1) {
                self.self_deadlock(me);
            }
        }
    }

    // Cold and out of line: `lock` is inlined everywhere, and the panic's
    // formatting must not grow every caller's stack frame.
    #[cold]
    #[inline(never)]
    fn self_deadlock(&self, me: u32) -> ! {
        panic!(
            "self-deadlock: cpu{me} takes lock {} at {:p}, which it already holds",
            self.name(),
            self
        );
    }

    #[cold]
    #[inline(never)]
    fn timed_out(&self, me: Option<u32>) -> ! {
        let waiting = self
            .next
            .load(Ordering::Relaxed)
            .wrapping_sub(self.serving.load(Ordering::Relaxed));
        let me = me.unwrap_or(u32::MAX);
        match self.holder() {
            Some(h) => panic!(
                "lock timeout: cpu{me} waited {LOCK_TIMEOUT_SECONDS} s for lock {} at {:p}, \
                 held by cpu{h} ({waiting} tickets taken)",
                self.name(),
                self
            ),
            None => panic!(
                "lock timeout: cpu{me} waited {LOCK_TIMEOUT_SECONDS} s for lock {} at {:p}, \
                 held by an unknown CPU ({waiting} tickets taken)",
                self.name(),
                self
            ),
        }
    }

    /// True while some CPU holds the lock (a hint: it may change at once).
    pub fn is_locked(&self) -> bool {
        self.next.load(Ordering::Relaxed) != self.serving.load(Ordering::Relaxed)
    }

    /// The CPU that holds the lock, when known (a hint, for reports).
    pub fn holder(&self) -> Option<u32> {
        match self.holder.load(Ordering::Relaxed) {
            NO_HOLDER => None,
            h => Some(h - 1),
        }
    }
}

/// One waiter's spinning: reads the clock now and then and gives up when
/// the timeout has passed.
struct Wait<'p> {
    env: Option<&'p Platform>,
    spins: u32,
    deadline: Option<u64>,
}

impl<'p> Wait<'p> {
    fn new(env: Option<&'p Platform>) -> Self {
        Wait {
            env,
            spins: 0,
            deadline: None,
        }
    }

    fn spin<T>(&mut self, lock: &SpinLock<T>, me: Option<u32>) {
        core::hint::spin_loop();
        self.spins = self.spins.wrapping_add(1);
        if !self.spins.is_multiple_of(SPINS_PER_CLOCK_READ) {
            return;
        }
        let Some(p) = self.env else { return };
        let now = (p.ticks)();
        match self.deadline {
            None => {
                let hz = (p.ticks_per_second)();
                if hz != 0 {
                    self.deadline =
                        Some(now.saturating_add(hz.saturating_mul(LOCK_TIMEOUT_SECONDS)));
                }
            }
            Some(d) if now >= d => lock.timed_out(me),
            Some(_) => {}
        }
    }
}

pub struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: holding the guard means holding the lock.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: holding the guard means holding the lock, and `&mut self`
        // makes this the only reference derived from it.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        // Cleared first: once `serving` moves, the next holder writes it.
        self.lock.holder.store(NO_HOLDER, Ordering::Relaxed);
        self.lock.serving.fetch_add(1, Ordering::Release);
    }
}

/// A value set once and read by anyone afterwards, for boot state that the
/// boot CPU discovers and every later phase reads.
pub struct Once<T> {
    // 0: empty, 1: being set, 2: set.
    state: AtomicU32,
    value: UnsafeCell<Option<T>>,
}

// SAFETY: the value is written once, before `state` becomes 2 with Release
// ordering, and only read after observing 2 with Acquire: readers share `&T`.
unsafe impl<T: Send + Sync> Sync for Once<T> {}

impl<T> Once<T> {
    pub const fn new() -> Self {
        Once {
            state: AtomicU32::new(0),
            value: UnsafeCell::new(None),
        }
    }

    /// Stores `value`, or hands it back if a value was already stored.
    pub fn set(&self, value: T) -> Result<(), T> {
        if self
            .state
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Err(value);
        }
        // SAFETY: state 1 makes this the only writer, and no reader looks
        // before state 2.
        unsafe { *self.value.get() = Some(value) };
        self.state.store(2, Ordering::Release);
        Ok(())
    }

    pub fn get(&self) -> Option<&T> {
        if self.state.load(Ordering::Acquire) != 2 {
            return None;
        }
        // SAFETY: state 2 means the value is written and never written again.
        unsafe { (*self.value.get()).as_ref() }
    }
}

impl<T> Default for Once<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn once_sets_once() {
        let o = Once::new();
        assert_eq!(o.get(), None);
        assert_eq!(o.set(5), Ok(()));
        assert_eq!(o.set(6), Err(6));
        assert_eq!(o.get(), Some(&5));
    }

    use super::*;
    use std::sync::Arc;

    #[test]
    fn excludes_and_counts() {
        let lock = Arc::new(SpinLock::new(0u64));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let l = lock.clone();
                std::thread::spawn(move || {
                    for _ in 0..5_000 {
                        // A non-atomic read-modify-write: lost updates would
                        // show if two threads were inside at once.
                        let mut g = l.lock();
                        let v = *g;
                        *g = v + 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*lock.lock(), 10_000);
    }

    use std::cell::Cell;

    thread_local! {
        static CPU: Cell<u32> = const { Cell::new(0) };
        static TICKS: Cell<u64> = const { Cell::new(0) };
    }

    /// Each test thread plays one CPU, with a clock that moves one tick per
    /// reading at 100 ticks per second.
    static FAKE: Platform = Platform {
        cpu: || CPU.with(|c| c.get()),
        ticks: || {
            TICKS.with(|t| {
                t.set(t.get() + 1);
                t.get()
            })
        },
        ticks_per_second: || 100,
    };

    /// The same CPUs with a timeout no test reaches: threads that the host
    /// preempts must not look stuck.
    static PATIENT: Platform = Platform {
        ticks_per_second: || 1 << 40,
        ..FAKE
    };

    fn as_cpu(n: u32) {
        CPU.with(|c| c.set(n));
    }

    fn panic_text(r: std::thread::Result<impl Sized>) -> String {
        let p = r.err().expect("the call must panic");
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    }

    #[test]
    fn taking_a_held_lock_again_panics_naming_it() {
        static L: SpinLock<u32> = SpinLock::named("FRAMES", 0);
        as_cpu(3);
        let g = L.lock_in(Some(&FAKE));
        assert_eq!(L.holder(), Some(3));
        let text = panic_text(std::panic::catch_unwind(|| L.lock_in(Some(&FAKE))));
        assert!(
            text.starts_with("self-deadlock: cpu3 takes lock FRAMES at 0x"),
            "{text}"
        );
        let text = panic_text(std::panic::catch_unwind(|| {
            L.lock_polling_in(Some(&FAKE), || {})
        }));
        assert!(text.contains("cpu3 takes lock FRAMES"), "{text}");
        // try_lock is the last-resort path: it refuses, it does not panic.
        assert!(L.try_lock().is_none());
        drop(g);
        assert_eq!(L.holder(), None);
        // Released: the same CPU takes it again.
        assert_eq!(*L.lock_in(Some(&FAKE)), 0);
    }

    #[test]
    fn unnamed_locks_are_named_by_their_type() {
        static L: SpinLock<Option<u64>> = SpinLock::new(None);
        assert_eq!(L.name(), "core::option::Option<u64>");
        as_cpu(0);
        let _g = L.lock_in(Some(&FAKE));
        let text = panic_text(std::panic::catch_unwind(|| L.lock_in(Some(&FAKE))));
        assert!(text.contains("lock core::option::Option<u64> at"), "{text}");
    }

    #[test]
    fn a_long_wait_names_the_holder() {
        static L: SpinLock<()> = SpinLock::named("the console", ());
        as_cpu(1);
        let g = L.lock_in(Some(&FAKE));
        for polling in [false, true] {
            let waiter = std::thread::spawn(move || {
                as_cpu(2);
                if polling {
                    drop(L.lock_polling_in(Some(&FAKE), || {}));
                } else {
                    drop(L.lock_in(Some(&FAKE)));
                }
            });
            let text = panic_text(waiter.join());
            assert!(
                text.starts_with(&format!(
                    "lock timeout: cpu2 waited {LOCK_TIMEOUT_SECONDS} s for lock the console at 0x"
                )),
                "{text}"
            );
            assert!(text.contains("held by cpu1"), "{text}");
        }
        drop(g);
    }

    #[test]
    fn waiters_on_other_cpus_get_the_lock_in_turn() {
        let lock = Arc::new(SpinLock::new(0u64));
        let threads: Vec<_> = (0..3)
            .map(|cpu| {
                let l = lock.clone();
                std::thread::spawn(move || {
                    as_cpu(cpu);
                    for i in 0..2_000 {
                        if i % 2 == 0 {
                            *l.lock_in(Some(&PATIENT)) += 1;
                        } else {
                            *l.lock_polling_in(Some(&PATIENT), || {}) += 1;
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("no waiter panics");
        }
        assert_eq!(*lock.lock(), 6_000);
        assert_eq!(lock.holder(), None);
    }

    #[test]
    fn try_lock_fails_while_held() {
        let lock = SpinLock::new(1);
        let g = lock.lock();
        assert!(lock.is_locked());
        assert!(lock.try_lock().is_none());
        drop(g);
        assert!(!lock.is_locked());
        assert_eq!(*lock.try_lock().expect("free lock"), 1);
    }
}

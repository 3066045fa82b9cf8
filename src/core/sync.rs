//! A ticket spin lock for the few singletons that every CPU shares (the
//! console, the frame allocator, the mm state).
//!
//! Single-owner state uses `AtomicRefCell` (a second borrow is a bug and
//! panics). State that several CPUs really contend for needs to wait instead,
//! and a ticket lock serves them in arrival order, so no CPU starves while
//! another logs in a loop. The kernel wraps this with interrupts masked
//! (`IrqLock` in the kernel); this module stays hardware-free.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU32, Ordering};

pub struct SpinLock<T> {
    next: AtomicU32,
    serving: AtomicU32,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out access to `value` to one holder at a time, so
// sharing the lock between threads only ever moves `T` between them.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: as above; owning the lock is owning `T`.
unsafe impl<T: Send> Send for SpinLock<T> {}

impl<T> SpinLock<T> {
    pub const fn new(value: T) -> Self {
        SpinLock {
            next: AtomicU32::new(0),
            serving: AtomicU32::new(0),
            value: UnsafeCell::new(value),
        }
    }

    pub fn lock(&self) -> SpinGuard<'_, T> {
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        while self.serving.load(Ordering::Acquire) != ticket {
            core::hint::spin_loop();
        }
        SpinGuard { lock: self }
    }

    /// Takes the lock only if nobody holds or waits for it.
    pub fn try_lock(&self) -> Option<SpinGuard<'_, T>> {
        let serving = self.serving.load(Ordering::Relaxed);
        self.next
            .compare_exchange(
                serving,
                serving.wrapping_add(1),
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .ok()
            .map(|_| SpinGuard { lock: self })
    }

    /// True while some CPU holds the lock (a hint: it may change at once).
    pub fn is_locked(&self) -> bool {
        self.next.load(Ordering::Relaxed) != self.serving.load(Ordering::Relaxed)
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

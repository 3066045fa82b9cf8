//! Interrupt masking, and a lock that masks interrupts while held.
//!
//! Locks that an IPI handler might also take (the console, when a handler
//! logs) must be held with interrupts off, or the handler would spin on a
//! lock its own CPU holds.

use core::ops::{Deref, DerefMut};
use hyperbatch::sync::{SpinGuard, SpinLock};
use x86_64::instructions::interrupts;

/// Runs `f` with interrupts masked, restoring the previous state after.
pub fn without<R>(f: impl FnOnce() -> R) -> R {
    interrupts::without_interrupts(f)
}

pub struct IrqLock<T> {
    inner: SpinLock<T>,
}

impl<T> IrqLock<T> {
    /// A lock that reports (self-deadlock, timeout) call `name`.
    pub const fn named(name: &'static str, value: T) -> Self {
        IrqLock {
            inner: SpinLock::named(name, value),
        }
    }

    pub fn lock(&self) -> IrqGuard<'_, T> {
        let were_enabled = interrupts::are_enabled();
        interrupts::disable();
        IrqGuard {
            guard: Some(self.inner.lock()),
            were_enabled,
        }
    }
}

pub struct IrqGuard<'a, T> {
    // Option so Drop can release the lock before re-enabling interrupts.
    guard: Option<SpinGuard<'a, T>>,
    were_enabled: bool,
}

impl<T> Deref for IrqGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.guard.as_ref().expect("guard present until drop")
    }
}

impl<T> DerefMut for IrqGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.guard.as_mut().expect("guard present until drop")
    }
}

impl<T> Drop for IrqGuard<'_, T> {
    fn drop(&mut self) {
        self.guard = None;
        if self.were_enabled {
            interrupts::enable();
        }
    }
}

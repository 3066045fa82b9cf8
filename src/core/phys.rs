//! Access to guest-physical memory, abstracted so that the parsers and the
//! page-table walker run against real RAM in the kernel and fake RAM on the
//! host.
//!
//! The kernel's implementation returns pointers through its identity map; the
//! host tests use `fake::FakeRam` (built for tests only), a byte buffer
//! placed at a chosen physical base. Everything that reads boot structures, firmware tables or page tables
//! goes through [`PhysMemory`], so every out-of-range address becomes an error
//! instead of a wild pointer.

use x86_64::PhysAddr;

/// A window onto physical memory.
pub trait PhysMemory {
    /// A pointer through which `len` bytes at `pa` can be read and written,
    /// or `None` when any of those bytes is not accessible.
    fn ptr(&self, pa: PhysAddr, len: usize) -> Option<*mut u8>;

    /// Copies `buf.len()` bytes from `pa` into `buf`.
    fn read(&self, pa: PhysAddr, buf: &mut [u8]) -> Option<()> {
        let p = self.ptr(pa, buf.len())?;
        // SAFETY: `ptr` promised that `buf.len()` bytes at `p` are accessible,
        // and `buf` is a distinct Rust allocation, so the ranges do not overlap.
        unsafe { core::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), buf.len()) };
        Some(())
    }

    /// Reads a little-endian `u8`/`u16`/`u32`/`u64` at `pa` (any alignment).
    fn read_u8(&self, pa: PhysAddr) -> Option<u8> {
        let mut b = [0u8; 1];
        self.read(pa, &mut b)?;
        Some(b[0])
    }
    fn read_u16(&self, pa: PhysAddr) -> Option<u16> {
        let mut b = [0u8; 2];
        self.read(pa, &mut b)?;
        Some(u16::from_le_bytes(b))
    }
    fn read_u32(&self, pa: PhysAddr) -> Option<u32> {
        let mut b = [0u8; 4];
        self.read(pa, &mut b)?;
        Some(u32::from_le_bytes(b))
    }
    fn read_u64(&self, pa: PhysAddr) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read(pa, &mut b)?;
        Some(u64::from_le_bytes(b))
    }
}

/// Fake RAM for host tests.
#[cfg(test)]
pub mod fake {
    use super::PhysMemory;
    use core::cell::UnsafeCell;
    use x86_64::PhysAddr;

    /// `len` bytes of zeroed, 4 KiB-aligned memory that pretend to live at
    /// physical address `base`.
    pub struct FakeRam {
        base: u64,
        mem: UnsafeCell<Vec<Page>>,
    }

    /// 4 KiB-aligned, so page-table pages in fake RAM are aligned as the
    /// hardware requires.
    #[derive(Clone)]
    #[repr(C, align(4096))]
    struct Page([u8; 4096]);

    impl FakeRam {
        pub fn new(base: u64, len: usize) -> Self {
            assert_eq!(base % 4096, 0);
            assert_eq!(len % 4096, 0);
            let pages = len / 4096;
            let v = vec![Page([0; 4096]); pages];
            FakeRam {
                base,
                mem: UnsafeCell::new(v),
            }
        }
        pub fn base(&self) -> u64 {
            self.base
        }
        pub fn is_empty(&self) -> bool {
            self.len() == 0
        }
        pub fn len(&self) -> usize {
            // SAFETY: the tests are single-threaded and no reference into the
            // vector outlives a call.
            unsafe { (*self.mem.get()).len() * 4096 }
        }
        /// Writes `bytes` at physical address `pa`; panics when out of range
        /// (a bug in the test, not in the code under test).
        pub fn write(&self, pa: u64, bytes: &[u8]) {
            let p = self
                .ptr(PhysAddr::new(pa), bytes.len())
                .expect("test wrote outside fake RAM");
            // SAFETY: `ptr` checked the range; `bytes` is a separate allocation.
            unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) };
        }
    }

    impl PhysMemory for FakeRam {
        fn ptr(&self, pa: PhysAddr, len: usize) -> Option<*mut u8> {
            let off = pa.as_u64().checked_sub(self.base)?;
            let end = off.checked_add(len as u64)?;
            if end > self.len() as u64 {
                return None;
            }
            // SAFETY: `off + len` lies within the vector, whose pages are
            // contiguous in memory (a Vec of arrays).
            Some(unsafe { ((*self.mem.get()).as_mut_ptr() as *mut u8).add(off as usize) })
        }
    }
}

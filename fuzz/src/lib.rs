//! What the fuzz targets share: fake physical memory that the library's
//! parsers read through [`PhysMemory`], the way the host unit tests use
//! theirs (that one is `cfg(test)` in src/core/phys.rs, out of reach here).
#![deny(unsafe_op_in_unsafe_fn)]

use core::cell::RefCell;
use core::ptr::NonNull;
use hyperbatch::phys::PhysMemory;
use x86_64::PhysAddr;

thread_local! {
    /// The last buffer freed, reused by the next `FuzzRam` of its size:
    /// a fresh 128 KiB allocation per input (an mmap under ASan) made the
    /// start_info target four times slower.
    static SPARE: RefCell<Option<Box<[u8]>>> = const { RefCell::new(None) };
}

/// `len` zeroed bytes that pretend to live at physical address `base`.
///
/// Held as a raw allocation, not a `Vec`: the frame allocator writes its
/// bitmap through the pointers [`PhysMemory::ptr`] hands out from `&self`,
/// which a `Vec` borrowed shared would not allow.
pub struct FuzzRam {
    base: u64,
    bytes: NonNull<[u8]>,
}

impl FuzzRam {
    pub fn new(base: u64, len: usize) -> Self {
        let spare = SPARE.with(|s| s.borrow_mut().take());
        let buf = match spare {
            Some(mut b) if b.len() == len => {
                b.fill(0);
                b
            }
            _ => vec![0u8; len].into_boxed_slice(),
        };
        let bytes = Box::into_raw(buf);
        FuzzRam {
            base,
            // A `Box` is never null.
            bytes: NonNull::new(bytes).expect("Box::into_raw is not null"),
        }
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.base + self.len() as u64
    }

    /// Copies `data` to `pa`, cutting off what does not fit; returns how
    /// many bytes were written.
    pub fn write(&mut self, pa: u64, data: &[u8]) -> usize {
        let Some(off) = pa.checked_sub(self.base) else {
            return 0;
        };
        let Ok(off) = usize::try_from(off) else {
            return 0;
        };
        let n = data.len().min(self.len().saturating_sub(off));
        if n > 0 {
            // SAFETY: `off + n <= len`, and `&mut self` excludes every other
            // access to the bytes for the call.
            unsafe {
                let dst = self.bytes.cast::<u8>().as_ptr().add(off);
                core::ptr::copy_nonoverlapping(data.as_ptr(), dst, n);
            }
        }
        n
    }

    /// The bytes at `[pa, pa + len)`, when they are all inside.
    pub fn slice(&self, pa: u64, len: usize) -> Option<&[u8]> {
        let p = self.ptr(PhysAddr::try_new(pa).ok()?, len)?;
        // SAFETY: `ptr` checked the range; nothing writes while the shared
        // borrow of `self` lasts (writes need `&mut self`, except the frame
        // allocator's, which the targets never run during a `slice`).
        Some(unsafe { core::slice::from_raw_parts(p, len) })
    }
}

impl Drop for FuzzRam {
    fn drop(&mut self) {
        // SAFETY: `bytes` came from `Box::into_raw` in `new` and is taken
        // back only here; no pointer handed out outlives `self`.
        let b = unsafe { Box::from_raw(self.bytes.as_ptr()) };
        SPARE.with(|s| *s.borrow_mut() = Some(b));
    }
}

impl PhysMemory for FuzzRam {
    fn ptr(&self, pa: PhysAddr, len: usize) -> Option<*mut u8> {
        let off = pa.as_u64().checked_sub(self.base)?;
        let end = off.checked_add(len as u64)?;
        if end > self.len() as u64 {
            return None;
        }
        // SAFETY: `off + len <= self.len()`, inside the allocation.
        Some(unsafe { self.bytes.cast::<u8>().as_ptr().add(off as usize) })
    }
}

/// The little-endian `u64` at `off` of `b`, 0 past the end.
pub fn le_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(off..off + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

/// The little-endian `u32` at `off` of `b`, 0 past the end.
pub fn le_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(off..off + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

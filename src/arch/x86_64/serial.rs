//! The COM1 16550 UART: the console every other module prints through.
//!
//! The UART is programmed once on the boot CPU; afterwards writing a byte is a
//! status poll and one `out`. Nothing here locks: `console.rs` serialises
//! whole lines, and the panic and exception paths write here directly.

use x86_64::instructions::port::Port;

/// The legacy COM1 base (PC/AT I/O map). QEMU (pc, q35, microvm) and
/// cloud-hypervisor (`--serial tty`) both put a 16550 there.
const COM1: u16 = 0x3f8;

const DATA: u16 = 0; // THR on write, divisor latch low when DLAB=1
const IER: u16 = 1; // interrupt enable, divisor latch high when DLAB=1
const FCR: u16 = 2;
const LCR: u16 = 3;
const MCR: u16 = 4;
const LSR: u16 = 5;
const LSR_THR_EMPTY: u8 = 1 << 5;

/// Programs COM1 for 115200 8N1 with FIFOs and no interrupts.
pub fn init() {
    // SAFETY: COM1's registers are owned by this module and writing them has
    // no effect on memory; this runs once, on the boot CPU, before any output.
    unsafe {
        Port::<u8>::new(COM1 + IER).write(0);
        Port::<u8>::new(COM1 + LCR).write(0x80); // DLAB: expose the divisor
        Port::<u8>::new(COM1 + DATA).write(1); // 115200 / 1
        Port::<u8>::new(COM1 + IER).write(0);
        Port::<u8>::new(COM1 + LCR).write(0x03); // 8 data bits, no parity, 1 stop
        Port::<u8>::new(COM1 + FCR).write(0xc7); // enable and clear FIFOs
        Port::<u8>::new(COM1 + MCR).write(0x03); // DTR | RTS
    }
}

/// Writes one byte. The wait for the transmitter is bounded so that a
/// missing UART slows output down instead of hanging the kernel.
pub fn write_byte(b: u8) {
    // SAFETY: reading LSR and writing THR have no memory effects; concurrent
    // writers at worst interleave bytes, which console.rs prevents for lines.
    unsafe {
        let mut lsr = Port::<u8>::new(COM1 + LSR);
        for _ in 0..100_000 {
            if lsr.read() & LSR_THR_EMPTY != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        Port::<u8>::new(COM1 + DATA).write(b);
    }
}

/// Writes `s`, turning `\n` into `\r\n` for terminals.
pub fn write_str(s: &str) {
    for b in s.bytes() {
        if b == b'\n' {
            write_byte(b'\r');
        }
        write_byte(b);
    }
}

/// A `core::fmt::Write` sink straight onto the wire, with no lock.
pub struct Raw;

impl core::fmt::Write for Raw {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        write_str(s);
        Ok(())
    }
}

//! The legacy 8259 PICs, which we never use but must silence.
//!
//! Firmware leaves them programmed for real mode: SeaBIOS (QEMU pc/q35)
//! routes IRQ0, the PIT tick, to vector 8, where it would pass for a double
//! fault. We move both PICs to vectors 0x20-0x2f and mask every line. A
//! masked 8259 can still raise a spurious IRQ7 or IRQ15, which
//! interrupts.rs ignores.

use x86_64::instructions::port::Port;

/// First vector of the remapped master PIC; the slave follows at +8.
pub const PIC_VECTOR_BASE: u8 = 0x20;

/// Non-specific EOI to the master PIC (OCW2), for a spurious IRQ15 that
/// the master saw as a real IRQ2.
pub fn eoi_master() {
    // SAFETY: writing OCW2 to the master's command port changes no memory.
    unsafe { Port::<u8>::new(0x20).write(0x20) };
}

pub fn remap_and_mask() {
    let mut master_cmd = Port::<u8>::new(0x20);
    let mut master_data = Port::<u8>::new(0x21);
    let mut slave_cmd = Port::<u8>::new(0xa0);
    let mut slave_data = Port::<u8>::new(0xa1);
    // SAFETY: the 8259 ports change no memory, and nothing else programs the
    // PICs. ICW1-ICW4 as in the 8259A datasheet: edge-triggered, cascaded,
    // vector bases, slave on IRQ2, 8086 mode; then mask everything.
    unsafe {
        master_cmd.write(0x11);
        slave_cmd.write(0x11);
        master_data.write(PIC_VECTOR_BASE);
        slave_data.write(PIC_VECTOR_BASE + 8);
        master_data.write(1 << 2);
        slave_data.write(2);
        master_data.write(0x01);
        slave_data.write(0x01);
        master_data.write(0xff);
        slave_data.write(0xff);
    }
}

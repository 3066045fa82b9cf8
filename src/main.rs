//! The hyperbatch kernel.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

mod arch;

#[no_mangle]
static AP_HANDOFF_PLACEHOLDER: [u64; 3] = [0; 3];

extern "C" fn kernel_entry(_start_info: u32) -> ! {
    arch::x86_64::serial::init();
    arch::x86_64::serial::write_str("hyperbatch: hello from long mode\n");
    unsafe { x86_64::instructions::port::Port::<u32>::new(0xf4).write(0) };
    loop {}
}

extern "C" fn ap_entry(_cpu: u64) -> ! {
    loop {}
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}

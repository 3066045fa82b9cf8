//! The console: prose log lines and `HB` records on COM1, one whole line at a
//! time.
//!
//! Every line goes out under one IRQ-masking lock so lines from different
//! CPUs never interleave. The panic and fault paths never take this lock:
//! they write through `serial::Raw`, so a CPU that dies while printing still
//! gets its report out.

use crate::arch::x86_64::{irq::IrqLock, percpu, serial};
use core::fmt::Write;
use hyperbatch::hb::{self, Object};

static LINE: IrqLock<()> = IrqLock::named("the console line", ());

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let _line = LINE.lock();
        let _ = writeln!(
            serial::Raw,
            "[cpu{}] {:<5} {}",
            percpu::cpu_index(),
            record.level(),
            record.args()
        );
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

/// Programs the UART and installs the `log` backend.
pub fn init() {
    serial::init();
    // set_logger fails only if a logger is already set, which cannot happen:
    // this runs once on the boot CPU.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
}

pub fn set_level(level: log::LevelFilter) {
    log::set_max_level(level);
}

/// Prints an `HB` record: `fill` adds the fields after `"event"`.
pub fn record(
    event: &str,
    fill: impl FnOnce(&mut Object<'_, serial::Raw>) -> Result<(), hb::Error>,
) {
    let _line = LINE.lock();
    let _ = hb::emit(&mut serial::Raw, event, fill);
}

/// Prints preformatted text (tables, banners) as one unit.
pub fn print(args: core::fmt::Arguments<'_>) {
    let _line = LINE.lock();
    let _ = serial::Raw.write_fmt(args);
}

#[macro_export]
macro_rules! println {
    () => { $crate::console::print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::console::print(format_args!("{}\n", format_args!($($arg)*))) };
}

//! Architecture support. hyperbatch runs on x86-64 only; the split keeps
//! instructions, ports and descriptor formats out of the generic modules.

pub mod x86_64;

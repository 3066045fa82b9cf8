//! hyperbatch: the hardware-free half of the unikernel.
//!
//! Everything here runs on the host too: `cargo test` exercises it against
//! fake RAM. The kernel binary (`src/main.rs` and `src/arch/`) owns the
//! hardware and calls into these modules along the boot flow:
//!
//! boot structures ([`pvh`], [`cmdline`]) → physical memory ([`frames`]) →
//! page tables ([`paging`]) → firmware tables ([`acpi_tables`]) → hypervisor
//! detection ([`hypervisor`]) → the hypercall queue ([`queue`]) and the mm
//! core that batches through it ([`mm`]) → serial records ([`hb`]).
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod acpi_tables;
pub mod cmdline;
pub mod frames;
pub mod hb;
pub mod hypervisor;
pub mod mm;
#[cfg(test)]
mod mm_tests;
pub mod paging;
pub mod phys;
pub mod pvh;
pub mod queue;
pub mod sync;

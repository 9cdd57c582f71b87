//! The guest image, built by pure functions over byte buffers (pg-model
//! section 5): page tables, GDT, IDT, TSS, LDT, ring-0 stubs, the code page
//! filled with the sentinel, the data page and the stack. Engines only
//! *apply* what is built here.

pub mod descriptors;
pub mod image;
pub mod landing;
pub mod layout;
pub mod stubs;

pub use image::{EntryState, GuestImage, Prepared, SegDesc, SysRegs};
pub use layout::*;

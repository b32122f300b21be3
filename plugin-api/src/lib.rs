//! The contract between bamflow and its filter plugins.
//!
//! A BAM record is already a well-defined byte layout (SAMv1 §4.2), so that layout is the
//! interchange format: the engine hands plugins raw, decompressed records and plugins answer
//! with a keep mask. This crate holds the pieces both sides share:
//!
//! - [`RecordView`]: a checked, zero-copy view over one record's bytes with lazy getters
//!   (flag, reference, position, MAPQ, name, CIGAR, sequence, qualities, tags). The engine's
//!   decoder reads every record through it, so plugins see exactly what the engine sees.
//! - [`Tags`] / [`TagValue`]: iteration over the optional fields with typed values.
//!
//! The `#[repr(C)]` plugin table, the safe filter trait and the export macro (DESIGN.md §7)
//! are added on top of these by the plugin issue; [`ABI_MAJOR`] is fixed from the start.

mod record;
mod tags;

pub use self::record::{RecordError, RecordView};
pub use self::tags::{Tag, TagArray, TagError, TagValue, Tags};

/// Major version of the plugin ABI. A host refuses a plugin built for another major.
pub const ABI_MAJOR: u32 = 1;

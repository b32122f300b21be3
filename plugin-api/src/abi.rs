//! The C ABI (DESIGN.md §7): what a plugin library exports and how the host calls it.
//!
//! A plugin exports one symbol, [`ENTRY_SYMBOL`] (`bamflow_plugin_v1`), a function returning a
//! pointer to a static [`PluginTable`]. The table starts with the ABI major and its own size, so
//! a host can refuse a library built for another major, and later minors can append fields
//! without breaking older hosts: a host reads only the fields `table_size` covers.
//!
//! Rust plugins never touch this module directly: they implement [`crate::Filter`] and call
//! [`crate::export_plugin!`]. It is public for hosts, and for plugins written in C.

use std::ffi::{c_char, c_void};

/// The symbol every plugin exports: `extern "C" fn() -> *const PluginTable`.
pub const ENTRY_SYMBOL: &[u8] = b"bamflow_plugin_v1\0";

/// The type of [`ENTRY_SYMBOL`].
pub type EntryPoint = unsafe extern "C" fn() -> *const PluginTable;

/// `flags` bit: the plugin's state may be called from several threads at once. Without it the
/// host creates one state per worker and never calls a state concurrently.
pub const FLAG_THREAD_SAFE: u64 = 1;

/// Status: the call succeeded.
pub const STATUS_OK: i32 = 0;
/// Status: the call failed; `last_error` says why.
pub const STATUS_ERROR: i32 = 1;
/// Status: the plugin panicked (Rust plugins) or crashed in a recoverable way; `last_error` says
/// where. The host fails the file, never the daemon.
pub const STATUS_PANIC: i32 = 2;

/// A batch of raw BAM records, borrowed for one `filter_batch` call.
///
/// Record `i` is `data[offsets[i]..offsets[i + 1]]`: the SAMv1 §4.2 layout of one alignment
/// without its leading `block_size`. `offsets` has `count + 1` entries, starting at 0.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawBatch {
    pub data: *const u8,
    pub data_len: usize,
    pub offsets: *const u32,
    pub count: usize,
}

/// What a plugin library exports. All strings are NUL-terminated UTF-8 and live as long as the
/// library.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PluginTable {
    /// [`crate::ABI_MAJOR`] of the API the plugin was built with.
    pub abi_major: u32,
    /// `size_of::<PluginTable>()` as the plugin knows it; fields past it do not exist.
    pub table_size: u32,
    /// Short name, used in logs, metrics (`filter` label) and the manifest.
    pub name: *const c_char,
    /// The plugin's own version.
    pub version: *const c_char,
    /// [`FLAG_THREAD_SAFE`] or 0.
    pub flags: u64,
    /// Creates a state from the plugin's `config` table (as JSON) and the file's SAM header
    /// text; writes it to `*state`. On failure returns a non-zero status and the message is
    /// available from `last_error(NULL)` on the same thread.
    pub create: unsafe extern "C" fn(
        config_json: *const u8,
        config_len: usize,
        sam_header: *const u8,
        header_len: usize,
        state: *mut *mut c_void,
    ) -> i32,
    /// Sets `keep[i]` to 1 to keep record `i` of `batch`, 0 to drop it. `keep` has
    /// `batch.count` bytes, all 1 on entry.
    pub filter_batch:
        unsafe extern "C" fn(state: *mut c_void, batch: *const RawBatch, keep: *mut u8) -> i32,
    /// The message of the last failed call on `state` (or of the last failed `create` on this
    /// thread when `state` is NULL); valid until the next call on it. Never NULL.
    pub last_error: unsafe extern "C" fn(state: *mut c_void) -> *const c_char,
    /// Frees a state. The host calls it exactly once per state.
    pub destroy: unsafe extern "C" fn(state: *mut c_void),
}

/// The size of this version's table, as plugins report it in `table_size`.
pub const TABLE_SIZE: u32 = std::mem::size_of::<PluginTable>() as u32;

/// Copies a string the ABI hands over (a table's name, `last_error`) into an owned `String`;
/// empty for NULL, invalid UTF-8 replaced.
///
/// # Safety
///
/// `ptr` is null or a NUL-terminated string valid for the call.
pub unsafe fn text(ptr: *const c_char) -> String {
    if ptr.is_null() {
        return String::new();
    }
    // SAFETY: the caller guarantees a NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned()
}

/// A [`PluginTable`] that can live in a `static`: its pointers are to `'static` data.
#[repr(transparent)]
pub struct StaticTable(pub PluginTable);

// SAFETY: the table is immutable and every pointer in it refers to static strings or functions.
unsafe impl Sync for StaticTable {}

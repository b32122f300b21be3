//! The host side of the ABI, safe: a checked plugin table and the states made from it. The
//! engine (which loads libraries) and the conformance harness both call plugins through it,
//! so every `unsafe` call into a plugin is in this file.

use std::ffi::c_void;

use crate::abi::{text, PluginTable, RawBatch, FLAG_THREAD_SAFE, STATUS_OK, STATUS_PANIC};
use crate::filter::Batch;
use crate::ABI_MAJOR;

/// A plugin's call failed: its status and its `last_error` message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallError {
    pub status: i32,
    pub message: String,
}

impl CallError {
    /// Whether the plugin panicked (and its macro turned the panic into a status).
    pub fn is_panic(&self) -> bool {
        self.status == STATUS_PANIC
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CallError {}

/// Why a table returned by a plugin's entry point cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableError {
    /// The entry point returned null.
    Null,
    /// The plugin was built for another ABI major.
    AbiMismatch { found: u32 },
    /// The table is smaller than this ABI's.
    TooSmall { found: u32 },
}

impl std::fmt::Display for TableError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Null => f.write_str("bamflow_plugin_v1 returned no table"),
            Self::AbiMismatch { found } => write!(
                f,
                "built for plugin ABI {found}, this bamflow speaks ABI {ABI_MAJOR}"
            ),
            Self::TooSmall { found } => write!(
                f,
                "its table is {found} bytes, smaller than the {} of ABI {ABI_MAJOR}",
                crate::abi::TABLE_SIZE
            ),
        }
    }
}

impl std::error::Error for TableError {}

/// A plugin table whose ABI major and size were checked, of a library that stays loaded.
#[derive(Clone, Copy, Debug)]
pub struct Table {
    table: &'static PluginTable,
}

// SAFETY: the table is immutable static data of a library that is never unloaded; its
// functions are called only as the ABI allows (states are shared only when thread-safe).
unsafe impl Send for Table {}
// SAFETY: as above; `Table` only reads the table.
unsafe impl Sync for Table {}

impl Table {
    /// Checks the table an entry point returned.
    ///
    /// # Errors
    ///
    /// A null table, another ABI major, or a table smaller than this ABI's.
    ///
    /// # Safety
    ///
    /// `table` is null or points to a plugin table that stays valid for the rest of the
    /// process: the static table of a library that is never unloaded.
    pub unsafe fn new(table: *const PluginTable) -> Result<Self, TableError> {
        // SAFETY: per the contract, a non-null pointer is a valid table; only the leading
        // `abi_major` and `table_size`, which every ABI version has, are read before they are
        // checked.
        let (abi_major, table_size) = match unsafe { table.as_ref() } {
            Some(t) => (t.abi_major, t.table_size),
            None => return Err(TableError::Null),
        };
        if abi_major != ABI_MAJOR {
            return Err(TableError::AbiMismatch { found: abi_major });
        }
        if table_size < crate::abi::TABLE_SIZE {
            return Err(TableError::TooSmall { found: table_size });
        }
        // SAFETY: same major and at least this ABI's size: every field read exists, and the
        // table lives for the rest of the process.
        let table = unsafe { &*table };
        Ok(Self { table })
    }

    /// The plugin's name.
    pub fn name(&self) -> String {
        // SAFETY: the ABI requires NUL-terminated strings that live as long as the library.
        unsafe { text(self.table.name) }
    }

    /// The plugin's version.
    pub fn version(&self) -> String {
        // SAFETY: as for the name.
        unsafe { text(self.table.version) }
    }

    /// Whether one state may be called from several threads at once.
    pub fn thread_safe(&self) -> bool {
        self.table.flags & FLAG_THREAD_SAFE != 0
    }

    /// Creates a state from the plugin's JSON config and the file's SAM header.
    ///
    /// # Errors
    ///
    /// The plugin's status and message.
    pub fn create(&self, config_json: &str, sam_header: &str) -> Result<State, CallError> {
        let mut ptr = std::ptr::null_mut();
        // SAFETY: the buffers are valid for their lengths and `ptr` is writable, as `create`
        // requires.
        let status = unsafe {
            (self.table.create)(
                config_json.as_ptr(),
                config_json.len(),
                sam_header.as_ptr(),
                sam_header.len(),
                &mut ptr,
            )
        };
        if status == STATUS_OK && !ptr.is_null() {
            return Ok(State { table: *self, ptr });
        }
        // SAFETY: `last_error(NULL)` returns this thread's create error, NUL-terminated.
        let message = unsafe { text((self.table.last_error)(std::ptr::null_mut())) };
        Err(CallError { status, message })
    }
}

/// One plugin state, destroyed on drop.
#[derive(Debug)]
pub struct State {
    table: Table,
    ptr: *mut c_void,
}

// SAFETY: a state may move between threads; the ABI only forbids concurrent calls, which
// `&mut self` in `filter` rules out, and `filter_shared` serves only thread-safe plugins.
unsafe impl Send for State {}
// SAFETY: shared access goes only through `filter_shared`, which refuses a plugin that does
// not declare FLAG_THREAD_SAFE.
unsafe impl Sync for State {}

impl State {
    /// Runs the plugin on a batch; `keep` (one byte per record) comes back as its mask.
    ///
    /// # Errors
    ///
    /// The plugin's status and message, or a mask of the wrong length.
    pub fn filter(&mut self, batch: &Batch<'_>, keep: &mut [u8]) -> Result<(), CallError> {
        self.call(batch, keep)
    }

    /// [`State::filter`] through a shared reference, for thread-safe plugins.
    ///
    /// # Errors
    ///
    /// As [`State::filter`]; a plugin that is not thread-safe is refused, not called.
    pub fn filter_shared(&self, batch: &Batch<'_>, keep: &mut [u8]) -> Result<(), CallError> {
        if !self.table.thread_safe() {
            return Err(CallError {
                status: crate::abi::STATUS_ERROR,
                message: "a state of a plugin that is not thread-safe was shared".into(),
            });
        }
        self.call(batch, keep)
    }

    fn call(&self, batch: &Batch<'_>, keep: &mut [u8]) -> Result<(), CallError> {
        if keep.len() != batch.len() {
            return Err(CallError {
                status: crate::abi::STATUS_ERROR,
                message: format!("{} mask bytes for {} records", keep.len(), batch.len()),
            });
        }
        let (data, offsets) = batch.parts();
        let raw = RawBatch {
            data: data.as_ptr(),
            data_len: data.len(),
            offsets: offsets.as_ptr(),
            count: batch.len(),
        };
        // SAFETY: the batch's buffers and the mask (one byte per record, checked above) are
        // valid for the call; the state is not called concurrently unless thread-safe.
        let status = unsafe { (self.table.table.filter_batch)(self.ptr, &raw, keep.as_mut_ptr()) };
        if status == STATUS_OK {
            return Ok(());
        }
        // SAFETY: `last_error` on a live state returns a NUL-terminated string.
        let message = unsafe { text((self.table.table.last_error)(self.ptr)) };
        Err(CallError { status, message })
    }
}

impl Drop for State {
    fn drop(&mut self) {
        // SAFETY: the state came from `create` and is destroyed exactly once.
        unsafe { (self.table.table.destroy)(self.ptr) }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::c_char;

    use super::*;
    use crate::abi::{StaticTable, STATUS_ERROR, TABLE_SIZE};
    use crate::RecordBuilder;

    /// Keeps every other record; refuses the config `"no"`.
    unsafe extern "C" fn create(
        config: *const u8,
        config_len: usize,
        _header: *const u8,
        _header_len: usize,
        state: *mut *mut c_void,
    ) -> i32 {
        // SAFETY: the host passes a buffer of `config_len` bytes.
        if unsafe { std::slice::from_raw_parts(config, config_len) } == b"no" {
            return STATUS_ERROR;
        }
        // SAFETY: the host passes a writable pointer.
        unsafe { *state = Box::into_raw(Box::new(0_u64)).cast() };
        STATUS_OK
    }

    unsafe extern "C" fn filter_batch(
        _state: *mut c_void,
        batch: *const RawBatch,
        keep: *mut u8,
    ) -> i32 {
        // SAFETY: the host passes a valid batch and `count` mask bytes.
        let count = unsafe { (*batch).count };
        for i in 0..count {
            // SAFETY: `i` < `count`.
            unsafe { *keep.add(i) = (i % 2 == 0) as u8 };
        }
        STATUS_OK
    }

    unsafe extern "C" fn last_error(_state: *mut c_void) -> *const c_char {
        c"config refused".as_ptr()
    }

    unsafe extern "C" fn destroy(state: *mut c_void) {
        // SAFETY: `state` came from `create`'s Box and is destroyed once.
        drop(unsafe { Box::from_raw(state.cast::<u64>()) });
    }

    const PLUGIN: PluginTable = PluginTable {
        abi_major: ABI_MAJOR,
        table_size: TABLE_SIZE,
        name: c"every-other".as_ptr(),
        version: c"1.0".as_ptr(),
        flags: 0,
        create,
        filter_batch,
        last_error,
        destroy,
    };
    static GOOD: StaticTable = StaticTable(PLUGIN);
    static OTHER_ABI: StaticTable = StaticTable(PluginTable {
        abi_major: ABI_MAJOR + 1,
        ..PLUGIN
    });
    static SMALL: StaticTable = StaticTable(PluginTable {
        table_size: 8,
        ..PLUGIN
    });

    fn table(table: &'static StaticTable) -> Result<Table, TableError> {
        // SAFETY: a static table, valid for the whole process.
        unsafe { Table::new(&table.0) }
    }

    #[test]
    fn tables_are_checked_before_use() {
        // SAFETY: null is allowed.
        let null = unsafe { Table::new(std::ptr::null()) };
        assert_eq!(null.err(), Some(TableError::Null));
        assert_eq!(
            table(&OTHER_ABI).err(),
            Some(TableError::AbiMismatch {
                found: ABI_MAJOR + 1
            })
        );
        assert_eq!(table(&SMALL).err(), Some(TableError::TooSmall { found: 8 }));
        let good = table(&GOOD).unwrap();
        assert_eq!(
            (good.name().as_str(), good.version().as_str()),
            ("every-other", "1.0")
        );
        assert!(!good.thread_safe());
    }

    #[test]
    fn states_filter_and_errors_carry_the_plugins_message() {
        let good = table(&GOOD).unwrap();
        let refused = good.create("no", "").unwrap_err();
        assert_eq!(
            (refused.status, refused.message.as_str()),
            (STATUS_ERROR, "config refused")
        );

        let records: Vec<Vec<u8>> = (0..5)
            .map(|i| RecordBuilder::new(&[b'r', b'0' + i]).build())
            .collect();
        let batch = crate::conformance::OwnedBatch::from_records(records.iter().map(Vec::as_slice));
        let view = Batch::new(&batch.data, &batch.offsets).unwrap();
        let mut state = good.create("{}", "").unwrap();
        let mut keep = vec![1; 5];
        state.filter(&view, &mut keep).unwrap();
        assert_eq!(keep, [1, 0, 1, 0, 1]);
        // A mask of the wrong length never reaches the plugin.
        assert!(state.filter(&view, &mut [1; 4]).is_err());
        // Not thread-safe: a shared call is refused, not made.
        let shared = state.filter_shared(&view, &mut keep).unwrap_err();
        assert!(shared.message.contains("not thread-safe"), "{shared}");
    }
}

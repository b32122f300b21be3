//! The safe side of the ABI: the [`Filter`] trait a plugin implements, the [`Batch`] it is
//! given, and the glue [`crate::export_plugin!`] instantiates.

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::abi::{self, STATUS_ERROR, STATUS_OK, STATUS_PANIC};
use crate::{RecordError, RecordView};

/// A filter over raw BAM records: keeps or drops each record before bamflow decodes it.
///
/// bamflow's built-in filters implement this trait too, in-process. A state is never called
/// from two threads at once: the host creates one per worker thread.
pub trait Filter: Sized + Send + 'static {
    /// Short name, for logs, the `filter` metric label and the manifest.
    const NAME: &'static CStr;
    /// The plugin's version.
    const VERSION: &'static CStr;

    /// Creates a state from the plugin's `config` table (as JSON text) and the input file's SAM
    /// header text.
    ///
    /// # Errors
    ///
    /// A message saying what is wrong with the configuration; the host fails the file with it.
    fn new(config_json: &str, sam_header: &str) -> Result<Self, String>;

    /// Sets `keep[i]` to 0 to drop record `i` of `batch`. `keep` is all 1 on entry and has one
    /// byte per record.
    ///
    /// # Errors
    ///
    /// A message; the host fails the file with it.
    fn filter(&mut self, batch: &Batch<'_>, keep: &mut [u8]) -> Result<(), String>;
}

/// Why a batch's layout is invalid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchError;

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("batch offsets are not increasing or point outside its data")
    }
}

impl std::error::Error for BatchError {}

/// Raw records, borrowed for one call: record `i` is `data[offsets[i]..offsets[i + 1]]`.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    data: &'a [u8],
    offsets: &'a [u32],
}

impl<'a> Batch<'a> {
    /// Checks that `offsets` starts at 0, never decreases and stays within `data`.
    ///
    /// # Errors
    ///
    /// Returns [`BatchError`] when they do not.
    pub fn new(data: &'a [u8], offsets: &'a [u32]) -> Result<Self, BatchError> {
        let ordered = offsets.windows(2).all(|w| w[0] <= w[1]);
        let within = offsets.last().is_none_or(|&end| end as usize <= data.len());
        let starts = offsets.first().is_none_or(|&start| start == 0);
        if ordered && within && starts {
            Ok(Self { data, offsets })
        } else {
            Err(BatchError)
        }
    }

    /// The buffer and the offsets, as the C ABI passes them.
    pub fn parts(&self) -> (&'a [u8], &'a [u32]) {
        (self.data, self.offsets)
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of record `i` (SAMv1 §4.2 without `block_size`).
    ///
    /// # Panics
    ///
    /// When `i >= self.len()`.
    pub fn raw(&self, i: usize) -> &'a [u8] {
        &self.data[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// A checked view of record `i`.
    ///
    /// # Errors
    ///
    /// Returns a [`RecordError`] when the record's lengths are inconsistent.
    ///
    /// # Panics
    ///
    /// When `i >= self.len()`.
    pub fn record(&self, i: usize) -> Result<RecordView<'a>, RecordError> {
        RecordView::new(self.raw(i))
    }

    /// Views of every record, in order.
    pub fn records(
        &self,
    ) -> impl ExactSizeIterator<Item = Result<RecordView<'a>, RecordError>> + '_ {
        (0..self.len()).map(|i| self.record(i))
    }
}

/// The glue between the C table and a [`Filter`]; used by [`crate::export_plugin!`].
#[doc(hidden)]
pub mod ffi {
    use super::*;

    struct State<F> {
        filter: F,
        error: CString,
    }

    thread_local! {
        static CREATE_ERROR: RefCell<CString> = RefCell::new(CString::default());
    }

    fn c_string(message: &str) -> CString {
        CString::new(message.replace('\0', " ")).unwrap_or_default()
    }

    fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        format!("plugin panicked: {message}")
    }

    /// A slice from a pointer the host passed, empty when the pointer is null.
    ///
    /// # Safety
    ///
    /// `ptr` must be null or valid for `len` reads of `T` for the call's duration.
    unsafe fn slice<'a, T>(ptr: *const T, len: usize) -> &'a [T] {
        if ptr.is_null() || len == 0 {
            &[]
        } else {
            // SAFETY: the caller guarantees `ptr` is valid for `len` elements.
            unsafe { std::slice::from_raw_parts(ptr, len) }
        }
    }

    /// # Safety
    ///
    /// Called by the host as `PluginTable::create`, with pointers valid for their lengths.
    pub unsafe extern "C" fn create<F: Filter>(
        config_json: *const u8,
        config_len: usize,
        sam_header: *const u8,
        header_len: usize,
        out: *mut *mut c_void,
    ) -> i32 {
        // SAFETY: the host passes buffers valid for the given lengths.
        let (config, header) = unsafe {
            (
                slice(config_json, config_len),
                slice(sam_header, header_len),
            )
        };
        let result = catch_unwind(|| {
            let config =
                std::str::from_utf8(config).map_err(|e| format!("config is not UTF-8: {e}"))?;
            let header =
                std::str::from_utf8(header).map_err(|e| format!("header is not UTF-8: {e}"))?;
            F::new(config, header)
        });
        let fail = |status, message: &str| {
            CREATE_ERROR.with(|e| *e.borrow_mut() = c_string(message));
            status
        };
        match result {
            Ok(Ok(filter)) if !out.is_null() => {
                let state = Box::new(State {
                    filter,
                    error: CString::default(),
                });
                // SAFETY: `out` is non-null and points to writable storage for a pointer.
                unsafe { *out = Box::into_raw(state).cast() };
                STATUS_OK
            }
            Ok(Ok(_)) => fail(STATUS_ERROR, "create was given no place for the state"),
            Ok(Err(message)) => fail(STATUS_ERROR, &message),
            Err(payload) => fail(STATUS_PANIC, &panic_message(payload.as_ref())),
        }
    }

    /// # Safety
    ///
    /// Called by the host as `PluginTable::filter_batch`, with a state from `create`, a batch
    /// whose pointers are valid for its lengths, and `keep` valid for `batch.count` bytes; never
    /// concurrently on one state.
    pub unsafe extern "C" fn filter_batch<F: Filter>(
        state: *mut c_void,
        batch: *const abi::RawBatch,
        keep: *mut u8,
    ) -> i32 {
        if state.is_null() || batch.is_null() {
            return STATUS_ERROR;
        }
        // SAFETY: `state` came from `create::<F>` and is not used concurrently.
        let state = unsafe { &mut *state.cast::<State<F>>() };
        // SAFETY: the host guarantees the batch and its buffers are valid for this call.
        let (data, offsets, keep) = unsafe {
            let batch = &*batch;
            let offsets_len = if batch.count == 0 && batch.offsets.is_null() {
                0
            } else {
                batch.count + 1
            };
            (
                slice(batch.data, batch.data_len),
                slice(batch.offsets, offsets_len),
                if keep.is_null() || batch.count == 0 {
                    &mut [][..]
                } else {
                    std::slice::from_raw_parts_mut(keep, batch.count)
                },
            )
        };
        let batch = match Batch::new(data, offsets) {
            Ok(batch) if batch.len() == keep.len() => batch,
            _ => {
                state.error = c_string(&BatchError.to_string());
                return STATUS_ERROR;
            }
        };
        let filter = &mut state.filter;
        match catch_unwind(AssertUnwindSafe(|| filter.filter(&batch, keep))) {
            Ok(Ok(())) => STATUS_OK,
            Ok(Err(message)) => {
                state.error = c_string(&message);
                STATUS_ERROR
            }
            Err(payload) => {
                state.error = c_string(&panic_message(payload.as_ref()));
                STATUS_PANIC
            }
        }
    }

    /// # Safety
    ///
    /// `state` is null or a state from `create::<F>`.
    pub unsafe extern "C" fn last_error<F: Filter>(state: *mut c_void) -> *const c_char {
        if state.is_null() {
            return CREATE_ERROR.with(|e| e.borrow().as_ptr());
        }
        // SAFETY: `state` came from `create::<F>`.
        let state = unsafe { &*state.cast::<State<F>>() };
        state.error.as_ptr()
    }

    /// # Safety
    ///
    /// `state` is a state from `create::<F>`, destroyed once.
    pub unsafe extern "C" fn destroy<F: Filter>(state: *mut c_void) {
        if !state.is_null() {
            // SAFETY: `state` came from `Box::into_raw` in `create::<F>` and is freed once.
            drop(unsafe { Box::from_raw(state.cast::<State<F>>()) });
        }
    }
}

/// Exports a [`Filter`] as a bamflow plugin: defines the `bamflow_plugin_v1` symbol returning
/// its [`abi::PluginTable`]. Panics inside the filter become [`abi::STATUS_PANIC`] with the
/// panic message, never unwinding into the host.
///
/// Use it once, in a `cdylib` crate: `bamflow_plugin_api::export_plugin!(MyFilter);`
#[macro_export]
macro_rules! export_plugin {
    ($filter:ty) => {
        /// The plugin's entry point (see `bamflow_plugin_api::abi`).
        #[no_mangle]
        pub extern "C" fn bamflow_plugin_v1() -> *const $crate::abi::PluginTable {
            static TABLE: $crate::abi::StaticTable =
                $crate::abi::StaticTable($crate::abi::PluginTable {
                    abi_major: $crate::ABI_MAJOR,
                    table_size: $crate::abi::TABLE_SIZE,
                    name: <$filter as $crate::Filter>::NAME.as_ptr(),
                    version: <$filter as $crate::Filter>::VERSION.as_ptr(),
                    flags: 0,
                    create: $crate::filter::ffi::create::<$filter>,
                    filter_batch: $crate::filter::ffi::filter_batch::<$filter>,
                    last_error: $crate::filter::ffi::last_error::<$filter>,
                    destroy: $crate::filter::ffi::destroy::<$filter>,
                });
            &TABLE.0
        }
    };
}

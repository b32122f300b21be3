//! Loading filter plugins and calling them through the C ABI (DESIGN.md §7).
//!
//! Every `unsafe` block of the host side lives here. Before a library is opened, its file and
//! folder must not be writable by group or others (anyone who can write it can run code as
//! bamflow), and its SHA-256 must match the pin when one is configured. Then the
//! `bamflow_plugin_v1` symbol must exist and its table must carry ABI major
//! [`ABI_MAJOR`] and be at least as large as the table this host knows.
//!
//! Libraries are never unloaded: a plugin may leave threads or thread-locals behind, and
//! unloading code still referenced is undefined behaviour. Loading the same path again reuses
//! the same handle (the dynamic loader counts references).

use std::ffi::c_void;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bamflow_plugin_api::abi::{
    text, EntryPoint, PluginTable, RawBatch, ENTRY_SYMBOL, FLAG_THREAD_SAFE, STATUS_OK,
    STATUS_PANIC, TABLE_SIZE,
};
use bamflow_plugin_api::{Batch, ABI_MAJOR};
use sha2::{Digest, Sha256};

/// Why a plugin was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin {}: cannot read it", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("plugin {}: {what} is writable by group or others (mode {mode:o}); refusing to load it", path.display())]
    Writable {
        path: PathBuf,
        what: &'static str,
        mode: u32,
    },
    #[error("plugin {}: SHA-256 is {actual}, but the config pins {expected}", path.display())]
    Sha256Mismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("plugin {}: cannot load it: {message}", path.display())]
    Load { path: PathBuf, message: String },
    #[error("plugin {}: no bamflow_plugin_v1 symbol: {message}", path.display())]
    NoSymbol { path: PathBuf, message: String },
    #[error("plugin {}: built for plugin ABI {found}, this bamflow speaks ABI {ABI_MAJOR}", path.display())]
    AbiMismatch { path: PathBuf, found: u32 },
    #[error("plugin {}: its table is {found} bytes, smaller than the {TABLE_SIZE} of ABI {ABI_MAJOR}", path.display())]
    TableTooSmall { path: PathBuf, found: u32 },
    #[error("plugin {name}: {message}")]
    Create { name: String, message: String },
    #[error("plugin {name} panicked: {message}")]
    Panicked { name: String, message: String },
    #[error("plugin {name} failed: {message}")]
    Failed { name: String, message: String },
}

/// A loaded plugin library: its checked table.
#[derive(Clone, Debug)]
pub struct Plugin {
    path: PathBuf,
    name: String,
    version: String,
    table: &'static PluginTable,
}

// SAFETY: the table is immutable static data of a library that is never unloaded; its
// functions are called only as the ABI allows (states are not shared unless thread-safe).
unsafe impl Send for Plugin {}
// SAFETY: as above; `Plugin` itself only reads the table.
unsafe impl Sync for Plugin {}

impl Plugin {
    /// Checks and loads the library at `path`.
    ///
    /// # Errors
    ///
    /// A [`PluginError`] saying which check failed.
    pub fn load(path: &Path, sha256: Option<&str>) -> Result<Self, PluginError> {
        check_permissions(path)?;
        if let Some(expected) = sha256 {
            let actual = sha256_of(path)?;
            if !actual.eq_ignore_ascii_case(expected.trim()) {
                return Err(PluginError::Sha256Mismatch {
                    path: path.to_owned(),
                    expected: expected.to_owned(),
                    actual,
                });
            }
        }
        // SAFETY: loading runs the library's initialisers. The file passed the permission
        // (and optional hash) checks above, which is the trust decision the operator made
        // by configuring it.
        let library = unsafe { libloading::Library::new(path) }.map_err(|e| PluginError::Load {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        // Never unloaded: see the module documentation.
        let library: &'static libloading::Library = Box::leak(Box::new(library));
        // SAFETY: the symbol is declared by the ABI as `extern "C" fn() -> *const PluginTable`.
        let entry: libloading::Symbol<'static, EntryPoint> =
            unsafe { library.get(ENTRY_SYMBOL) }.map_err(|e| PluginError::NoSymbol {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        // SAFETY: calling the entry point as the ABI defines it; it returns a pointer to a
        // static table or null.
        let table = unsafe { entry() };
        // SAFETY: a non-null table pointer points to static data of the never-unloaded library;
        // only the leading `abi_major` and `table_size` are read before they are checked.
        let (abi_major, table_size) = match unsafe { table.as_ref() } {
            Some(t) => (t.abi_major, t.table_size),
            None => {
                return Err(PluginError::Load {
                    path: path.to_owned(),
                    message: "bamflow_plugin_v1 returned no table".to_owned(),
                })
            }
        };
        if abi_major != ABI_MAJOR {
            return Err(PluginError::AbiMismatch {
                path: path.to_owned(),
                found: abi_major,
            });
        }
        if table_size < TABLE_SIZE {
            return Err(PluginError::TableTooSmall {
                path: path.to_owned(),
                found: table_size,
            });
        }
        // SAFETY: same major and at least our table's size: every field we read exists.
        let table: &'static PluginTable = unsafe { &*table };
        // SAFETY: the ABI requires NUL-terminated strings that live as long as the library.
        let (name, version) = unsafe { (text(table.name), text(table.version)) };
        Ok(Self {
            path: path.to_owned(),
            name,
            version,
            table,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn thread_safe(&self) -> bool {
        self.table.flags & FLAG_THREAD_SAFE != 0
    }

    /// Runs the plugin API's conformance harness on this plugin.
    pub fn conformance(&self, config_json: &str) -> bamflow_plugin_api::conformance::Report {
        // SAFETY: the table was checked by `load` (ABI major, table size) and its library is
        // never unloaded.
        unsafe { bamflow_plugin_api::conformance::check(self.table, config_json) }
    }

    /// Creates a state for one file.
    ///
    /// # Errors
    ///
    /// [`PluginError::Create`] (or `Panicked`) with the plugin's message.
    pub fn create(&self, config_json: &str, sam_header: &str) -> Result<PluginState, PluginError> {
        let mut ptr = std::ptr::null_mut();
        // SAFETY: buffers valid for their lengths, `ptr` writable; the ABI's create contract.
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
            return Ok(PluginState {
                plugin: self.clone(),
                ptr,
            });
        }
        // SAFETY: `last_error(NULL)` returns this thread's create error, NUL-terminated.
        let message = unsafe { text((self.table.last_error)(std::ptr::null_mut())) };
        let name = self.name.clone();
        Err(if status == STATUS_PANIC {
            PluginError::Panicked { name, message }
        } else {
            PluginError::Create { name, message }
        })
    }
}

/// One plugin state; destroyed on drop.
pub struct PluginState {
    plugin: Plugin,
    ptr: *mut c_void,
}

// SAFETY: a state may move between threads; the ABI only forbids concurrent calls, which
// `&mut self` in `filter` rules out, and `filter_shared` is used only for thread-safe plugins.
unsafe impl Send for PluginState {}
// SAFETY: shared access only goes through `filter_shared`, which callers use only when the
// plugin declares FLAG_THREAD_SAFE.
unsafe impl Sync for PluginState {}

impl PluginState {
    /// Runs the plugin on a batch, exclusively.
    ///
    /// # Errors
    ///
    /// The plugin's message.
    pub fn filter(&mut self, batch: &Batch<'_>, keep: &mut [u8]) -> Result<(), PluginError> {
        self.call(batch, keep)
    }

    /// Runs a thread-safe plugin's shared state on a batch.
    ///
    /// # Errors
    ///
    /// The plugin's message.
    pub fn filter_shared(&self, batch: &Batch<'_>, keep: &mut [u8]) -> Result<(), PluginError> {
        debug_assert!(self.plugin.thread_safe());
        self.call(batch, keep)
    }

    fn call(&self, batch: &Batch<'_>, keep: &mut [u8]) -> Result<(), PluginError> {
        let (data, offsets) = batch.parts();
        let raw = RawBatch {
            data: data.as_ptr(),
            data_len: data.len(),
            offsets: offsets.as_ptr(),
            count: batch.len(),
        };
        // SAFETY: the batch buffers and the mask (one byte per record) are valid for the call,
        // and the state is not used concurrently unless the plugin is thread-safe.
        let status = unsafe { (self.plugin.table.filter_batch)(self.ptr, &raw, keep.as_mut_ptr()) };
        if status == STATUS_OK {
            return Ok(());
        }
        // SAFETY: `last_error` on a live state returns a NUL-terminated string.
        let message = unsafe { text((self.plugin.table.last_error)(self.ptr)) };
        let name = self.plugin.name.clone();
        Err(if status == STATUS_PANIC {
            PluginError::Panicked { name, message }
        } else {
            PluginError::Failed { name, message }
        })
    }
}

impl Drop for PluginState {
    fn drop(&mut self) {
        // SAFETY: the state came from `create` and is destroyed exactly once.
        unsafe { (self.plugin.table.destroy)(self.ptr) }
    }
}

/// Refuses a library (or its folder) that group or others can write.
fn check_permissions(path: &Path) -> Result<(), PluginError> {
    let read = |source| PluginError::Read {
        path: path.to_owned(),
        source,
    };
    let metadata = fs::metadata(path).map_err(read)?;
    let folder = path
        .canonicalize()
        .map_err(read)?
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("/"));
    let folder_metadata = fs::metadata(&folder).map_err(read)?;
    for (what, mode) in [
        ("the file", metadata.permissions().mode()),
        ("its folder", folder_metadata.permissions().mode()),
    ] {
        // The sticky bit (/tmp) does not stop others from replacing files they own.
        if mode & 0o022 != 0 {
            return Err(PluginError::Writable {
                path: path.to_owned(),
                what,
                mode: mode & 0o7777,
            });
        }
    }
    Ok(())
}

fn sha256_of(path: &Path) -> Result<String, PluginError> {
    let read = |source| PluginError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = fs::File::open(path).map_err(read)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(read)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

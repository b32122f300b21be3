//! Loading filter plugins and calling them through the C ABI (DESIGN.md §7).
//!
//! Opening the library and finding its entry point are the only `unsafe` here; calls into the
//! plugin go through the plugin API's safe host wrapper ([`bamflow_plugin_api::host`]), which
//! the conformance harness uses too. Before a library is opened, its file and
//! folder must not be writable by group or others (anyone who can write it can run code as
//! bamflow), and its SHA-256 must match the pin when one is configured. Then the
//! `bamflow_plugin_v1` symbol must exist and its table must carry ABI major
//! [`ABI_MAJOR`] and be at least as large as the table this host knows.
//!
//! Libraries are never unloaded: a plugin may leave threads or thread-locals behind, and
//! unloading code still referenced is undefined behaviour. Loading the same path again reuses
//! the same handle (the dynamic loader counts references).

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bamflow_plugin_api::abi::{EntryPoint, ENTRY_SYMBOL, TABLE_SIZE};
use bamflow_plugin_api::host::{CallError, State, Table, TableError};
use bamflow_plugin_api::{Batch, ABI_MAJOR};
use sha2::{Digest, Sha256};

/// Why a plugin was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin {}: cannot read it", path.display())]
    /// The library or its folder cannot be read.
    Read {
        /// The library.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    #[error("plugin {}: {what} is writable by group or others (mode {mode:o}); refusing to load it", path.display())]
    /// Group or others can write the library or its folder.
    Writable {
        /// The library.
        path: PathBuf,
        /// `the file` or `its folder`.
        what: &'static str,
        /// Its mode.
        mode: u32,
    },
    #[error("plugin {}: SHA-256 is {actual}, but the config pins {expected}", path.display())]
    /// The library is not the one pinned.
    Sha256Mismatch {
        /// The library.
        path: PathBuf,
        /// The pin.
        expected: String,
        /// The file's SHA-256.
        actual: String,
    },
    #[error("plugin {}: cannot load it: {message}", path.display())]
    /// The dynamic loader refused it.
    Load {
        /// The library.
        path: PathBuf,
        /// What the loader said.
        message: String,
    },
    #[error("plugin {}: no bamflow_plugin_v1 symbol: {message}", path.display())]
    /// It exports no `bamflow_plugin_v1`.
    NoSymbol {
        /// The library.
        path: PathBuf,
        /// What the loader said.
        message: String,
    },
    #[error("plugin {}: built for plugin ABI {found}, this bamflow speaks ABI {ABI_MAJOR}", path.display())]
    /// It was built for another ABI major.
    AbiMismatch {
        /// The library.
        path: PathBuf,
        /// Its ABI major.
        found: u32,
    },
    #[error("plugin {}: its table is {found} bytes, smaller than the {TABLE_SIZE} of ABI {ABI_MAJOR}", path.display())]
    /// Its table is smaller than this ABI's.
    TableTooSmall {
        /// The library.
        path: PathBuf,
        /// Its table's size.
        found: u32,
    },
    #[error("plugin {name}: {message}")]
    /// It refused its config or the header.
    Create {
        /// The plugin.
        name: String,
        /// Its message.
        message: String,
    },
    #[error("plugin {name} panicked: {message}")]
    /// It panicked.
    Panicked {
        /// The plugin.
        name: String,
        /// The panic's message.
        message: String,
    },
    #[error("plugin {name} failed: {message}")]
    /// It failed on a batch.
    Failed {
        /// The plugin.
        name: String,
        /// Its message.
        message: String,
    },
}

/// A loaded plugin library: its checked table.
#[derive(Clone, Debug)]
pub struct Plugin {
    path: PathBuf,
    name: String,
    version: String,
    table: Table,
}

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
        // static table of the library, or null.
        let table = unsafe { entry() };
        // SAFETY: the library is never unloaded, so a table it returned stays valid.
        let table = unsafe { Table::new(table) }.map_err(|error| match error {
            TableError::AbiMismatch { found } => PluginError::AbiMismatch {
                path: path.to_owned(),
                found,
            },
            TableError::TooSmall { found } => PluginError::TableTooSmall {
                path: path.to_owned(),
                found,
            },
            TableError::Null => PluginError::Load {
                path: path.to_owned(),
                message: error.to_string(),
            },
        })?;
        let (name, version) = (table.name(), table.version());
        Ok(Self {
            path: path.to_owned(),
            name,
            version,
            table,
        })
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The plugin's version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The library.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether one state may serve several threads at once.
    pub fn thread_safe(&self) -> bool {
        self.table.thread_safe()
    }

    /// Runs the plugin API's conformance harness on this plugin.
    pub fn conformance(&self, config_json: &str) -> bamflow_plugin_api::conformance::Report {
        bamflow_plugin_api::conformance::check(self.table, config_json)
    }

    /// Creates a state for one file.
    ///
    /// # Errors
    ///
    /// [`PluginError::Create`] (or `Panicked`) with the plugin's message.
    pub fn create(&self, config_json: &str, sam_header: &str) -> Result<PluginState, PluginError> {
        let state = self
            .table
            .create(config_json, sam_header)
            .map_err(|error| self.failed(error, true))?;
        Ok(PluginState {
            plugin: self.clone(),
            state,
        })
    }

    /// A plugin's error, named: a panic, a refused config (`creating`), or a failed call.
    fn failed(&self, error: CallError, creating: bool) -> PluginError {
        let (name, message) = (self.name.clone(), error.message.clone());
        if error.is_panic() {
            PluginError::Panicked { name, message }
        } else if creating {
            PluginError::Create { name, message }
        } else {
            PluginError::Failed { name, message }
        }
    }
}

/// One plugin state, made for one file; destroyed on drop.
pub struct PluginState {
    plugin: Plugin,
    state: State,
}

impl PluginState {
    /// Runs the plugin on a batch, exclusively.
    ///
    /// # Errors
    ///
    /// The plugin's message.
    pub fn filter(&mut self, batch: &Batch<'_>, keep: &mut [u8]) -> Result<(), PluginError> {
        self.state
            .filter(batch, keep)
            .map_err(|e| self.plugin.failed(e, false))
    }

    /// Runs a thread-safe plugin's shared state on a batch.
    ///
    /// # Errors
    ///
    /// The plugin's message; a plugin that is not thread-safe is refused.
    pub fn filter_shared(&self, batch: &Batch<'_>, keep: &mut [u8]) -> Result<(), PluginError> {
        self.state
            .filter_shared(batch, keep)
            .map_err(|e| self.plugin.failed(e, false))
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

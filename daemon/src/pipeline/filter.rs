//! Filters on raw records, between framing and decoding: a dropped record is never decoded.
//!
//! Built-in filters (flags, MAPQ, regions) implement the plugin API's [`Filter`] trait
//! in-process; plugins come through the C ABI ([`crate::plugin`]). Both run behind
//! [`BatchFilter`], in the order configured: built-ins first (flags, MAPQ, regions), then
//! plugins in `[[plugin]]` order. After each filter the batch is compacted, so the next one
//! sees only the records still kept and each dropped record is counted once, for the filter
//! that dropped it.
//!
//! States are pooled: a worker takes one for a batch and puts it back, so a state is never
//! used by two threads at once (what the ABI promises plugins that are not thread-safe) and
//! there are never more states than workers.

use std::ffi::CStr;
use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;

use bamflow_plugin_api::{Batch, Filter};

use super::RawBatch;
use crate::plugin::{Plugin, PluginError, PluginState};

/// Why filtering failed.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("filter {filter} failed on the batch starting at record {record}: {message}")]
    Failed {
        filter: String,
        record: u64,
        message: String,
    },
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("region {region:?}: {reason}")]
    Region { region: String, reason: String },
}

impl FilterError {
    /// Record number (from 1) of the first record of the batch the filter failed on.
    pub fn record(&self) -> Option<u64> {
        match self {
            Self::Failed { record, .. } => Some(*record),
            _ => None,
        }
    }
}

/// A region as samtools takes it: `chr`, `chr:beg`, `chr:beg-end`, 1-based and inclusive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    pub name: String,
    /// 1-based first position.
    pub start: u64,
    /// 1-based last position, inclusive; `None` for the end of the reference.
    pub end: Option<u64>,
}

impl Region {
    /// Parses `chr`, `chr:beg` or `chr:beg-end` (commas in numbers allowed, as samtools does).
    ///
    /// # Errors
    ///
    /// A message saying what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let number = |s: &str| -> Result<u64, String> {
            s.replace(',', "")
                .parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{text:?}: {s:?} is not a position (1-based)"))
        };
        let (name, range) = match text.rsplit_once(':') {
            Some((name, range))
                if !range.is_empty()
                    && range
                        .chars()
                        .all(|c| c.is_ascii_digit() || ",-".contains(c)) =>
            {
                (name, Some(range))
            }
            _ => (text, None),
        };
        if name.is_empty() {
            return Err(format!("{text:?} has no reference name"));
        }
        let (start, end) = match range {
            None => (1, None),
            Some(range) => match range.split_once('-') {
                Some((start, "")) => (number(start)?, None),
                Some((start, end)) => (number(start)?, Some(number(end)?)),
                None => (number(range)?, None),
            },
        };
        if end.is_some_and(|end| end < start) {
            return Err(format!("{text:?} ends before it starts"));
        }
        Ok(Self {
            name: name.to_owned(),
            start,
            end,
        })
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.end {
            None if self.start == 1 => write!(f, "{}", self.name),
            None => write!(f, "{}:{}", self.name, self.start),
            Some(end) => write!(f, "{}:{}-{}", self.name, self.start, end),
        }
    }
}

/// A plugin to load: its library, an optional pinned SHA-256, and its `config` as JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginSpec {
    pub path: PathBuf,
    pub sha256: Option<String>,
    pub config_json: String,
}

/// The filters of a conversion, as configured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilterOptions {
    pub min_mapq: u8,
    /// Keep records with all these flag bits set (`samtools view -f`).
    pub include_flags: u16,
    /// Drop records with any of these flag bits set (`samtools view -F`).
    pub exclude_flags: u16,
    pub regions: Vec<Region>,
    pub plugins: Vec<PluginSpec>,
}

impl FilterOptions {
    /// The names of the built-in filters these options run, in order.
    pub fn builtin_names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.include_flags != 0 {
            names.push("include_flags");
        }
        if self.exclude_flags != 0 {
            names.push("exclude_flags");
        }
        if self.min_mapq != 0 {
            names.push("min_mapq");
        }
        if !self.regions.is_empty() {
            names.push("regions");
        }
        names
    }

    /// One line per filter, for the manifest and the checkpoint's settings.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.include_flags != 0 {
            out.push(format!("include_flags={:#x}", self.include_flags));
        }
        if self.exclude_flags != 0 {
            out.push(format!("exclude_flags={:#x}", self.exclude_flags));
        }
        if self.min_mapq != 0 {
            out.push(format!("min_mapq={}", self.min_mapq));
        }
        if !self.regions.is_empty() {
            let regions: Vec<_> = self.regions.iter().map(ToString::to_string).collect();
            out.push(format!("regions={}", regions.join(",")));
        }
        for plugin in &self.plugins {
            out.push(format!(
                "plugin={} config={}",
                plugin.path.display(),
                plugin.config_json
            ));
        }
        out
    }
}

/// One filter over whole batches, however it is implemented.
pub trait BatchFilter: Send + Sync {
    /// The name for counts, metrics and messages.
    fn name(&self) -> &str;

    /// Sets `keep[i]` to 0 for each record of `batch` to drop; `keep` is all 1 on entry.
    ///
    /// # Errors
    ///
    /// The filter's message.
    fn apply(&self, batch: &Batch<'_>, keep: &mut [u8]) -> Result<(), String>;
}

/// A [`Filter`] run in-process, one state per concurrent caller.
pub struct InProcess<F> {
    name: String,
    states: Mutex<Vec<F>>,
    make: Box<dyn Fn() -> Result<F, String> + Send + Sync>,
}

impl<F: Filter> InProcess<F> {
    pub fn new(make: impl Fn() -> Result<F, String> + Send + Sync + 'static) -> Self {
        Self {
            name: F::NAME.to_string_lossy().into_owned(),
            states: Mutex::new(Vec::new()),
            make: Box::new(make),
        }
    }
}

impl<F: Filter> BatchFilter for InProcess<F> {
    fn name(&self) -> &str {
        &self.name
    }

    fn apply(&self, batch: &Batch<'_>, keep: &mut [u8]) -> Result<(), String> {
        let taken = self.states.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut state = match taken {
            Some(state) => state,
            None => (self.make)()?,
        };
        let result = state.filter(batch, keep);
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(state);
        result
    }
}

/// A plugin's states for one conversion: one per concurrent caller, or one shared state when
/// the plugin declares itself thread-safe.
pub struct PluginFilter {
    plugin: Plugin,
    config_json: String,
    header: String,
    states: Mutex<Vec<PluginState>>,
    shared: Option<PluginState>,
}

impl PluginFilter {
    /// Creates the first state now, so a plugin that rejects its config fails the file before
    /// any record is read.
    ///
    /// # Errors
    ///
    /// The plugin's `create` error.
    pub fn new(plugin: Plugin, config_json: &str, header: &str) -> Result<Self, PluginError> {
        let first = plugin.create(config_json, header)?;
        let (states, shared) = if plugin.thread_safe() {
            (Vec::new(), Some(first))
        } else {
            (vec![first], None)
        };
        Ok(Self {
            plugin,
            config_json: config_json.to_owned(),
            header: header.to_owned(),
            states: Mutex::new(states),
            shared,
        })
    }
}

impl BatchFilter for PluginFilter {
    fn name(&self) -> &str {
        self.plugin.name()
    }

    fn apply(&self, batch: &Batch<'_>, keep: &mut [u8]) -> Result<(), String> {
        if let Some(shared) = &self.shared {
            return shared.filter_shared(batch, keep).map_err(|e| e.to_string());
        }
        let taken = self.states.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut state = match taken {
            Some(state) => state,
            None => self
                .plugin
                .create(&self.config_json, &self.header)
                .map_err(|e| e.to_string())?,
        };
        let result = state.filter(batch, keep).map_err(|e| e.to_string());
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(state);
        result
    }
}

/// Keeps records with all of `include` set and none of `exclude` (`samtools view -f/-F`).
pub struct Flags {
    include: u16,
    exclude: u16,
}

/// `samtools view -f`.
pub struct IncludeFlags(Flags);
/// `samtools view -F`.
pub struct ExcludeFlags(Flags);

impl Flags {
    fn keep(&self, batch: &Batch<'_>, keep: &mut [u8]) -> Result<(), String> {
        for (i, record) in batch.records().enumerate() {
            let flags = record.map_err(|e| e.to_string())?.flags();
            keep[i] = u8::from(flags & self.include == self.include && flags & self.exclude == 0);
        }
        Ok(())
    }
}

impl Filter for IncludeFlags {
    const NAME: &'static CStr = c"include_flags";
    const VERSION: &'static CStr = c"builtin";

    fn new(config_json: &str, _: &str) -> Result<Self, String> {
        let include = config_json.parse().map_err(|e| format!("{e}"))?;
        Ok(Self(Flags {
            include,
            exclude: 0,
        }))
    }

    fn filter(&mut self, batch: &Batch<'_>, keep: &mut [u8]) -> Result<(), String> {
        self.0.keep(batch, keep)
    }
}

impl Filter for ExcludeFlags {
    const NAME: &'static CStr = c"exclude_flags";
    const VERSION: &'static CStr = c"builtin";

    fn new(config_json: &str, _: &str) -> Result<Self, String> {
        let exclude = config_json.parse().map_err(|e| format!("{e}"))?;
        Ok(Self(Flags {
            include: 0,
            exclude,
        }))
    }

    fn filter(&mut self, batch: &Batch<'_>, keep: &mut [u8]) -> Result<(), String> {
        self.0.keep(batch, keep)
    }
}

/// Keeps records with MAPQ at least the minimum (`samtools view -q`; 255 counts as 255).
pub struct MinMapq(u8);

impl Filter for MinMapq {
    const NAME: &'static CStr = c"min_mapq";
    const VERSION: &'static CStr = c"builtin";

    fn new(config_json: &str, _: &str) -> Result<Self, String> {
        config_json.parse().map(Self).map_err(|e| format!("{e}"))
    }

    fn filter(&mut self, batch: &Batch<'_>, keep: &mut [u8]) -> Result<(), String> {
        for (i, record) in batch.records().enumerate() {
            keep[i] = u8::from(record.map_err(|e| e.to_string())?.mapping_quality() >= self.0);
        }
        Ok(())
    }
}

/// Keeps records whose alignment overlaps one of the regions (`samtools view FILE REGION…`):
/// `[pos, pos + reference span)`, where unmapped records and empty spans count one base.
#[derive(Clone)]
pub struct Overlaps {
    /// Per reference id: 0-based half-open intervals, sorted.
    by_reference: Vec<Vec<(u64, u64)>>,
}

impl Overlaps {
    /// Resolves region names against the file's references.
    ///
    /// # Errors
    ///
    /// A region names a reference the file does not have.
    pub fn new(regions: &[Region], reference_names: &[String]) -> Result<Self, FilterError> {
        let mut by_reference = vec![Vec::new(); reference_names.len()];
        for region in regions {
            let id = reference_names
                .iter()
                .position(|name| *name == region.name)
                .ok_or_else(|| FilterError::Region {
                    region: region.to_string(),
                    reason: "the file has no such reference".to_owned(),
                })?;
            by_reference[id].push((region.start - 1, region.end.unwrap_or(u64::MAX)));
        }
        for intervals in &mut by_reference {
            intervals.sort_unstable();
        }
        Ok(Self { by_reference })
    }
}

impl Filter for Overlaps {
    const NAME: &'static CStr = c"regions";
    const VERSION: &'static CStr = c"builtin";

    fn new(_: &str, _: &str) -> Result<Self, String> {
        Err("the regions filter is built from resolved regions".to_owned())
    }

    fn filter(&mut self, batch: &Batch<'_>, keep: &mut [u8]) -> Result<(), String> {
        for (i, record) in batch.records().enumerate() {
            let record = record.map_err(|e| e.to_string())?;
            let intervals = usize::try_from(record.reference_sequence_id())
                .ok()
                .and_then(|id| self.by_reference.get(id));
            let (Some(intervals), Ok(pos)) = (intervals, u64::try_from(record.position())) else {
                keep[i] = 0;
                continue;
            };
            let span = if record.is_unmapped() {
                1
            } else {
                record.reference_span().map_err(|e| e.to_string())?.max(1)
            };
            let end = pos + span;
            keep[i] = u8::from(
                intervals
                    .iter()
                    .any(|&(start, stop)| pos < stop && start < end),
            );
        }
        Ok(())
    }
}

/// The filters of one conversion, in order.
#[derive(Default)]
pub struct FilterChain {
    filters: Vec<Box<dyn BatchFilter>>,
}

impl FilterChain {
    pub fn new(filters: Vec<Box<dyn BatchFilter>>) -> Self {
        Self { filters }
    }

    /// Builds the built-in filters of `options` (plugins are added by the caller, who loads
    /// them).
    ///
    /// # Errors
    ///
    /// A region names a reference the file does not have.
    pub fn builtins(
        options: &FilterOptions,
        reference_names: &[String],
    ) -> Result<Vec<Box<dyn BatchFilter>>, FilterError> {
        let mut filters: Vec<Box<dyn BatchFilter>> = Vec::new();
        if options.include_flags != 0 {
            let include = options.include_flags;
            filters.push(Box::new(InProcess::new(move || {
                IncludeFlags::new(&include.to_string(), "")
            })));
        }
        if options.exclude_flags != 0 {
            let exclude = options.exclude_flags;
            filters.push(Box::new(InProcess::new(move || {
                ExcludeFlags::new(&exclude.to_string(), "")
            })));
        }
        if options.min_mapq != 0 {
            let min = options.min_mapq;
            filters.push(Box::new(InProcess::new(move || {
                MinMapq::new(&min.to_string(), "")
            })));
        }
        if !options.regions.is_empty() {
            let overlaps = Overlaps::new(&options.regions, reference_names)?;
            filters.push(Box::new(InProcess::new(move || Ok(overlaps.clone()))));
        }
        Ok(filters)
    }

    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    pub fn push(&mut self, filter: Box<dyn BatchFilter>) {
        self.filters.push(filter);
    }

    /// The filters' names, in order.
    pub fn names(&self) -> Vec<String> {
        self.filters.iter().map(|f| f.name().to_owned()).collect()
    }

    /// Runs every filter over `batch`, compacting it after each; returns how many records each
    /// filter dropped, in order.
    ///
    /// # Errors
    ///
    /// The first filter's failure, naming the filter and the batch's first record.
    pub fn apply(&self, batch: &mut RawBatch, keep: &mut Vec<u8>) -> Result<Vec<u64>, FilterError> {
        let mut dropped = Vec::with_capacity(self.filters.len());
        for filter in &self.filters {
            if batch.is_empty() {
                dropped.push(0);
                continue;
            }
            keep.clear();
            keep.resize(batch.len(), 1);
            let view =
                Batch::new(&batch.data, &batch.offsets).map_err(|e| FilterError::Failed {
                    filter: filter.name().to_owned(),
                    record: batch.first_record + 1,
                    message: e.to_string(),
                })?;
            filter
                .apply(&view, keep)
                .map_err(|message| FilterError::Failed {
                    filter: filter.name().to_owned(),
                    record: batch.first_record + 1,
                    message,
                })?;
            let before = batch.len();
            batch.retain(keep);
            dropped.push((before - batch.len()) as u64);
        }
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_parse_as_samtools_takes_them() {
        let r = |text: &str| Region::parse(text).unwrap();
        assert_eq!(r("chr1").to_string(), "chr1");
        assert_eq!(
            r("chr1:1,000-2,000"),
            Region {
                name: "chr1".into(),
                start: 1000,
                end: Some(2000)
            }
        );
        assert_eq!(
            r("chr1:500"),
            Region {
                name: "chr1".into(),
                start: 500,
                end: None
            }
        );
        assert_eq!(
            r("chr1:500-"),
            Region {
                name: "chr1".into(),
                start: 500,
                end: None
            }
        );
        assert!(Region::parse("chr1:0-5").is_err());
        assert!(Region::parse("chr1:9-5").is_err());
        assert!(Region::parse(":1-5").is_err());
    }
}

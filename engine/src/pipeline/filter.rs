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
    /// A filter failed on a batch.
    Failed {
        /// The filter's name.
        filter: String,
        /// The batch's first record (from 1).
        record: u64,
        /// The filter's message.
        message: String,
    },
    #[error(transparent)]
    /// A plugin was refused or failed.
    Plugin(#[from] PluginError),
    #[error("region {region:?}: {reason}")]
    /// A region cannot be answered (no index, no such reference).
    Region {
        /// The region, as given.
        region: String,
        /// Why it cannot be answered.
        reason: String,
    },
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

/// A region as samtools takes it: `chr`, `chr:beg`, `chr:beg-end`, 1-based and inclusive;
/// `{name}` or `{name}:beg-end` for a reference whose name holds `:` or `,`; `*` for the
/// unplaced records (no reference, no position) at the end of a sorted file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    /// Reference name, or `*` for the unplaced records.
    pub name: String,
    /// 1-based first position.
    pub start: u64,
    /// 1-based last position, inclusive; `None` for the end of the reference.
    pub end: Option<u64>,
}

impl Region {
    /// The name of the region of unplaced records, as `samtools view in.bam '*'` takes it.
    pub const UNPLACED: &'static str = "*";

    /// Whether this is `*`, the unplaced records (no reference can be named `*` in SAM).
    pub fn is_unplaced(&self) -> bool {
        self.name == Self::UNPLACED
    }

    /// Parses `chr`, `chr:beg` or `chr:beg-end` (commas in numbers allowed, as samtools does),
    /// htslib's braced `{name}` and `{name}:beg-end`, and `*`.
    ///
    /// # Errors
    ///
    /// A message saying what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(braced) = text.strip_prefix('{') {
            let (name, rest) = braced
                .split_once('}')
                .ok_or_else(|| format!("{text:?} has a {{ without its }}"))?;
            let region = match rest {
                "" => Self::parse_unbraced(text, "x")?,
                _ => match rest.strip_prefix(':') {
                    Some(range) if !range.is_empty() => {
                        Self::parse_unbraced(text, &format!("x:{range}"))?
                    }
                    _ => {
                        return Err(format!(
                            "{text:?}: after {{{name}}} comes :beg-end or nothing"
                        ))
                    }
                },
            };
            if name.is_empty() {
                return Err(format!("{text:?} has no reference name"));
            }
            return Ok(Self {
                name: name.to_owned(),
                ..region
            });
        }
        Self::parse_unbraced(text, text)
    }

    /// Parses `text` as `chr[:beg[-end]]`; `whole` names it in messages.
    fn parse_unbraced(whole: &str, text: &str) -> Result<Self, String> {
        let number = |s: &str| -> Result<u64, String> {
            s.replace(',', "")
                .parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{whole:?}: {s:?} is not a position (1-based)"))
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
            return Err(format!("{whole:?} has no reference name"));
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
            return Err(format!("{whole:?} ends before it starts"));
        }
        if name == Self::UNPLACED && range.is_some() {
            return Err(format!(
                "{whole:?}: the unplaced records ({}) have no positions",
                Self::UNPLACED
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            start,
            end,
        })
    }
}

impl fmt::Display for Region {
    /// As [`Region::parse`] reads it back: braced when the name holds `:` or `,`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.contains([':', ',']) {
            write!(f, "{{{}}}", self.name)?;
        } else {
            f.write_str(&self.name)?;
        }
        match self.end {
            None if self.start == 1 => Ok(()),
            None => write!(f, ":{}", self.start),
            Some(end) => write!(f, ":{}-{}", self.start, end),
        }
    }
}

/// A plugin to load: its library, an optional pinned SHA-256, and its `config` as JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginSpec {
    /// The shared library.
    pub path: PathBuf,
    /// Its pinned SHA-256, if any.
    pub sha256: Option<String>,
    /// Its `config` table, as JSON.
    pub config_json: String,
}

/// The filters of a conversion, as configured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilterOptions {
    /// Keep records with MAPQ at least this.
    pub min_mapq: u8,
    /// Keep records with all these flag bits set (`samtools view -f`).
    pub include_flags: u16,
    /// Drop records with any of these flag bits set (`samtools view -F`).
    pub exclude_flags: u16,
    /// Keep records overlapping any of these.
    pub regions: Vec<Region>,
    /// Plugins, run after the built-ins, in order.
    pub plugins: Vec<PluginSpec>,
}

impl FilterOptions {
    /// The built-in filters these options run, in the order they run.
    fn builtins(&self) -> Vec<Builtin<'_>> {
        let mut out = Vec::new();
        if self.include_flags != 0 {
            out.push(Builtin::IncludeFlags(self.include_flags));
        }
        if self.exclude_flags != 0 {
            out.push(Builtin::ExcludeFlags(self.exclude_flags));
        }
        if self.min_mapq != 0 {
            out.push(Builtin::MinMapq(self.min_mapq));
        }
        if !self.regions.is_empty() {
            out.push(Builtin::Regions(&self.regions));
        }
        out
    }

    /// The names of the built-in filters these options run, in order.
    pub fn builtin_names(&self) -> Vec<&'static str> {
        self.builtins().iter().map(Builtin::name).collect()
    }

    /// One line per filter, for the manifest and the checkpoint's settings.
    pub fn describe(&self) -> Vec<String> {
        let mut out: Vec<String> = self.builtins().iter().map(Builtin::describe).collect();
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

/// A configured built-in filter.
enum Builtin<'a> {
    IncludeFlags(u16),
    ExcludeFlags(u16),
    MinMapq(u8),
    Regions(&'a [Region]),
}

impl Builtin<'_> {
    fn name(&self) -> &'static str {
        let name = match self {
            Self::IncludeFlags(_) => IncludeFlags::NAME,
            Self::ExcludeFlags(_) => ExcludeFlags::NAME,
            Self::MinMapq(_) => MinMapq::NAME,
            Self::Regions(_) => Overlaps::NAME,
        };
        name.to_str().unwrap_or_default()
    }

    fn describe(&self) -> String {
        match self {
            Self::IncludeFlags(bits) | Self::ExcludeFlags(bits) => {
                format!("{}={bits:#x}", self.name())
            }
            Self::MinMapq(min) => format!("{}={min}", self.name()),
            Self::Regions(regions) => {
                let regions: Vec<_> = regions.iter().map(ToString::to_string).collect();
                format!("{}={}", self.name(), regions.join(","))
            }
        }
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

/// Filter states for concurrent callers: a caller takes one (or makes one when none is free),
/// uses it alone, and puts it back, so there are never more states than callers at once.
struct StatePool<S> {
    free: Mutex<Vec<S>>,
}

impl<S> StatePool<S> {
    fn new(first: Vec<S>) -> Self {
        Self {
            free: Mutex::new(first),
        }
    }

    fn with<T>(
        &self,
        make: impl FnOnce() -> Result<S, String>,
        work: impl FnOnce(&mut S) -> Result<T, String>,
    ) -> Result<T, String> {
        let taken = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut state = match taken {
            Some(state) => state,
            None => make()?,
        };
        let result = work(&mut state);
        self.free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(state);
        result
    }
}

/// A built-in [`Filter`] run in-process; states are copies of a prototype.
pub struct InProcess<F> {
    name: String,
    prototype: F,
    states: StatePool<F>,
}

impl<F: Filter + Clone + Sync> InProcess<F> {
    /// A built-in filter run in-process; `prototype` is cloned per worker.
    pub fn new(prototype: F) -> Self {
        Self {
            name: F::NAME.to_string_lossy().into_owned(),
            prototype,
            states: StatePool::new(Vec::new()),
        }
    }
}

impl<F: Filter + Clone + Sync> BatchFilter for InProcess<F> {
    fn name(&self) -> &str {
        &self.name
    }

    fn apply(&self, batch: &Batch<'_>, keep: &mut [u8]) -> Result<(), String> {
        self.states.with(
            || Ok(self.prototype.clone()),
            |state| state.filter(batch, keep),
        )
    }
}

/// A plugin's states for one conversion: one per concurrent caller, or one shared state when
/// the plugin declares itself thread-safe.
pub struct PluginFilter {
    plugin: Plugin,
    config_json: String,
    header: String,
    states: StatePool<PluginState>,
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
            states: StatePool::new(states),
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
        self.states.with(
            || {
                self.plugin
                    .create(&self.config_json, &self.header)
                    .map_err(|e| e.to_string())
            },
            |state| state.filter(batch, keep).map_err(|e| e.to_string()),
        )
    }
}

/// Sets each record's keep byte from `keeps(record)`.
fn keep_where(
    batch: &Batch<'_>,
    keep: &mut [u8],
    keeps: impl Fn(&bamflow_plugin_api::RecordView<'_>) -> bool,
) -> Result<(), String> {
    for (i, record) in batch.records().enumerate() {
        keep[i] = u8::from(keeps(&record.map_err(|e| e.to_string())?));
    }
    Ok(())
}

/// Keeps records with all these flag bits set (`samtools view -f`).
#[derive(Clone, Copy, Debug)]
pub struct IncludeFlags(pub u16);

/// Drops records with any of these flag bits set (`samtools view -F`).
#[derive(Clone, Copy, Debug)]
pub struct ExcludeFlags(pub u16);

/// Keeps records with MAPQ at least the minimum (`samtools view -q`; 255 counts as 255).
#[derive(Clone, Copy, Debug)]
pub struct MinMapq(pub u8);

/// Built-ins take their settings from bamflow's config, never as JSON.
fn not_from_json<T>(name: &CStr) -> Result<T, String> {
    Err(format!(
        "the built-in filter {name:?} is configured in [filter], not as a plugin"
    ))
}

impl Filter for IncludeFlags {
    const NAME: &'static CStr = c"include_flags";
    const VERSION: &'static CStr = c"builtin";

    fn new(_: &str, _: &str) -> Result<Self, String> {
        not_from_json(Self::NAME)
    }

    fn filter(&mut self, batch: &Batch<'_>, keep: &mut [u8]) -> Result<(), String> {
        let bits = self.0;
        keep_where(batch, keep, |r| r.flags() & bits == bits)
    }
}

impl Filter for ExcludeFlags {
    const NAME: &'static CStr = c"exclude_flags";
    const VERSION: &'static CStr = c"builtin";

    fn new(_: &str, _: &str) -> Result<Self, String> {
        not_from_json(Self::NAME)
    }

    fn filter(&mut self, batch: &Batch<'_>, keep: &mut [u8]) -> Result<(), String> {
        let bits = self.0;
        keep_where(batch, keep, |r| r.flags() & bits == 0)
    }
}

impl Filter for MinMapq {
    const NAME: &'static CStr = c"min_mapq";
    const VERSION: &'static CStr = c"builtin";

    fn new(_: &str, _: &str) -> Result<Self, String> {
        not_from_json(Self::NAME)
    }

    fn filter(&mut self, batch: &Batch<'_>, keep: &mut [u8]) -> Result<(), String> {
        let min = self.0;
        keep_where(batch, keep, |r| r.mapping_quality() >= min)
    }
}

/// Keeps records whose alignment overlaps one of the regions (`samtools view FILE REGION…`):
/// `[pos, pos + reference span)`, where unmapped records and empty spans count one base.
#[derive(Clone)]
pub struct Overlaps {
    /// Per reference id: 0-based half-open intervals, sorted.
    by_reference: Vec<Vec<(u64, u64)>>,
    /// Keep the unplaced records (no reference id): the region `*`.
    unplaced: bool,
}

impl Overlaps {
    /// Resolves region names against the file's references.
    ///
    /// # Errors
    ///
    /// A region names a reference the file does not have.
    pub fn new(regions: &[Region], reference_names: &[String]) -> Result<Self, FilterError> {
        let mut by_reference = vec![Vec::new(); reference_names.len()];
        let mut unplaced = false;
        for region in regions {
            if region.is_unplaced() {
                unplaced = true;
                continue;
            }
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
        Ok(Self {
            by_reference,
            unplaced,
        })
    }
}

impl Filter for Overlaps {
    const NAME: &'static CStr = c"regions";
    const VERSION: &'static CStr = c"builtin";

    fn new(_: &str, _: &str) -> Result<Self, String> {
        not_from_json(Self::NAME)
    }

    fn filter(&mut self, batch: &Batch<'_>, keep: &mut [u8]) -> Result<(), String> {
        for (i, record) in batch.records().enumerate() {
            let record = record.map_err(|e| e.to_string())?;
            if record.reference_sequence_id() < 0 {
                keep[i] = u8::from(self.unplaced);
                continue;
            }
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
    /// The chain of `filters`, run in this order.
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
        options
            .builtins()
            .into_iter()
            .map(|builtin| -> Result<Box<dyn BatchFilter>, FilterError> {
                Ok(match builtin {
                    Builtin::IncludeFlags(bits) => Box::new(InProcess::new(IncludeFlags(bits))),
                    Builtin::ExcludeFlags(bits) => Box::new(InProcess::new(ExcludeFlags(bits))),
                    Builtin::MinMapq(min) => Box::new(InProcess::new(MinMapq(min))),
                    Builtin::Regions(regions) => {
                        Box::new(InProcess::new(Overlaps::new(regions, reference_names)?))
                    }
                })
            })
            .collect()
    }

    /// Whether there is no filter.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// The filters' names, in order.
    pub fn names(&self) -> impl ExactSizeIterator<Item = &str> {
        self.filters.iter().map(|f| f.name())
    }

    /// Runs every filter over `batch`, compacting it after each; returns how many records each
    /// filter dropped, in order.
    ///
    /// # Errors
    ///
    /// The first filter's failure, naming the filter and the batch's first record.
    pub fn apply(&self, batch: &mut RawBatch, keep: &mut Vec<u8>) -> Result<Vec<u64>, FilterError> {
        let mut dropped = Vec::with_capacity(self.filters.len());
        if !self.filters.is_empty() {
            batch.compact();
        }
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
    use bamflow_plugin_api::RecordBuilder;

    use super::*;
    use crate::pipeline::tests::raw_batch;

    #[test]
    fn the_chain_runs_in_order_counts_per_filter_and_compacts_between() {
        // flag, mapq, reference id and position of six records.
        let specs = [
            (0x0, 60, 0, 100),
            (0x400, 60, 0, 200), // duplicate: exclude_flags
            (0x0, 5, 0, 300),    // low MAPQ
            (0x10, 60, 1, 100),  // chr2: outside the region
            (0x0, 60, 0, 5_000), // past the region
            (0x0, 30, 0, 150),
        ];
        let records: Vec<Vec<u8>> = specs
            .iter()
            .enumerate()
            .map(|(i, &(flags, mapq, id, pos))| {
                RecordBuilder::new(format!("r{i}").as_bytes())
                    .reference(id, pos)
                    .flags(flags)
                    .mapq(mapq)
                    .cigar(&[(b'M', 50)])
                    .build()
            })
            .collect();
        let options = FilterOptions {
            exclude_flags: 0x400,
            min_mapq: 20,
            regions: vec![Region::parse("chr1:1-1000").unwrap()],
            ..FilterOptions::default()
        };
        let names = ["chr1".to_owned(), "chr2".to_owned()];
        let chain = FilterChain::new(FilterChain::builtins(&options, &names).unwrap());
        assert_eq!(
            chain.names().collect::<Vec<_>>(),
            ["exclude_flags", "min_mapq", "regions"]
        );
        let mut batch = raw_batch(&records);
        let mut keep = Vec::new();
        let dropped = chain.apply(&mut batch, &mut keep).unwrap();
        assert_eq!(dropped, [1, 1, 2]);
        let kept: Vec<&[u8]> = batch.records().collect();
        assert_eq!(kept, [&records[0][..], &records[5]]);

        // An empty batch passes through every filter, each dropping nothing.
        let mut empty = raw_batch(&[]);
        assert_eq!(chain.apply(&mut empty, &mut keep).unwrap(), [0, 0, 0]);
    }

    #[test]
    fn the_unplaced_region_keeps_only_records_without_a_reference() {
        let placed = RecordBuilder::new(b"placed")
            .reference(0, 10)
            .cigar(&[(b'M', 5)])
            .build();
        // Unmapped but placed beside its mate: not unplaced.
        let beside_mate = RecordBuilder::new(b"mate")
            .reference(0, 10)
            .flags(0x4)
            .build();
        let unplaced = RecordBuilder::new(b"unplaced").build();
        let options = FilterOptions {
            regions: vec![Region::parse("*").unwrap()],
            ..FilterOptions::default()
        };
        let chain = FilterChain::new(FilterChain::builtins(&options, &["c".to_owned()]).unwrap());
        let mut batch = raw_batch(&[placed, beside_mate, unplaced.clone()]);
        chain.apply(&mut batch, &mut Vec::new()).unwrap();
        assert_eq!(batch.records().collect::<Vec<_>>(), [&unplaced[..]]);
    }

    #[test]
    fn a_region_on_a_reference_the_file_lacks_is_refused() {
        let options = FilterOptions {
            regions: vec![Region::parse("chrX").unwrap()],
            ..FilterOptions::default()
        };
        let error = FilterChain::builtins(&options, &["chr1".to_owned()])
            .err()
            .unwrap();
        assert!(error.to_string().contains("no such reference"), "{error}");
    }

    #[test]
    fn braced_names_and_the_unplaced_region_parse_as_htslib_takes_them() {
        let r = |text: &str| Region::parse(text).unwrap();
        let braced = r("{chr1:100}:1-50");
        assert_eq!(
            (braced.name.as_str(), braced.start, braced.end),
            ("chr1:100", 1, Some(50))
        );
        assert_eq!(r("{chr1,chr3}").name, "chr1,chr3");
        assert_eq!(r("{chr1,chr3}").end, None);
        assert!(r("*").is_unplaced() && !r("chr1").is_unplaced());
        for text in ["{chr1:100}:1-50", "{chr1,chr3}", "{a:b}:7", "*", "chr2:5-9"] {
            assert_eq!(r(text).to_string(), text, "round trip");
        }
        for bad in ["{chr1", "{}", "{chr1}x", "{chr1}:", "*:1-5"] {
            assert!(Region::parse(bad).is_err(), "{bad}");
        }
    }

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

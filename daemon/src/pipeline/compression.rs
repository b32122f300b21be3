//! zstd levels per column, and the trial that picks QUAL's level when it is `auto`.
//!
//! zstd's level-3 match finder (`dfast`, 5-byte matches) is slow on Phred+33 text, and whether
//! it pays depends on the instrument: on ART Illumina and noise-like ONT qualities level 1 is
//! 1.3-4 times faster and no larger, on binned NovaSeq qualities both are the same, while on
//! smooth, random-walk-like qualities level 3 is 23% smaller. So `auto` compresses a sample of
//! the file's own qualities both ways and keeps level 1 only when it costs at most
//! [`AUTO_TOLERANCE`] in size.

use std::collections::BTreeMap;

use bamflow_plugin_api::RecordView;
use serde::{Deserialize, Serialize};

use super::RawBatch;

/// Level 1 is kept when its trial output is at most this much larger than at `zstd_level`.
pub const AUTO_TOLERANCE: f64 = 1.02;
/// Parquet compresses one data page at a time; the trial compresses the same way.
const PAGE_BYTES: usize = 1 << 20;
/// Quality text the trial compresses at most: two pages add 20-40 ms to a profile at level 3.
const TRIAL_BYTES: usize = 2 * PAGE_BYTES;

/// A column's own level: a number, or `"auto"` (QUAL only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ColumnLevel {
    Level(i32),
    Auto(AutoWord),
}

/// The word `auto`, as TOML and JSON spell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AutoWord {
    #[serde(rename = "auto")]
    Auto,
}

impl ColumnLevel {
    pub const AUTO: Self = Self::Auto(AutoWord::Auto);
}

impl std::str::FromStr for ColumnLevel {
    type Err = std::num::ParseIntError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "auto" {
            return Ok(Self::AUTO);
        }
        text.parse().map(Self::Level)
    }
}

/// What compressing the sample's qualities at level 1 and at `level` gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct QualityTrial {
    pub sample_bytes: usize,
    pub level: i32,
    pub bytes_at_level: usize,
    pub bytes_at_1: usize,
}

impl QualityTrial {
    /// Compresses up to [`TRIAL_BYTES`] of the batch's quality text page by page at level 1
    /// and at `level`; `None` when no record has qualities or zstd fails.
    pub fn of(batch: &RawBatch, level: i32) -> Option<Self> {
        let text = quality_text(batch);
        if text.is_empty() {
            return None;
        }
        let compressed = |level| -> Option<usize> {
            let mut compressor = zstd::bulk::Compressor::new(level).ok()?;
            text.chunks(PAGE_BYTES)
                .map(|page| compressor.compress(page).ok().map(|c| c.len()))
                .sum()
        };
        Some(Self {
            sample_bytes: text.len(),
            level,
            bytes_at_level: compressed(level)?,
            bytes_at_1: compressed(1)?,
        })
    }

    /// The level `auto` settles on.
    pub fn choice(&self) -> i32 {
        if self.bytes_at_1 as f64 <= self.bytes_at_level as f64 * AUTO_TOLERANCE {
            1
        } else {
            self.level
        }
    }
}

/// Phred+33 text of the batch's qualities, as the `qual` column holds it, up to the trial size.
fn quality_text(batch: &RawBatch) -> Vec<u8> {
    let mut text = Vec::new();
    let records = batch
        .records()
        .filter_map(|bytes| RecordView::new(bytes).ok());
    for view in records {
        let scores = view.quality_scores();
        if scores.first().is_none_or(|&q| q == 0xff) {
            continue;
        }
        let room = TRIAL_BYTES - text.len();
        text.extend(scores.iter().take(room).map(|&q| q.min(93) + 33));
        if text.len() == TRIAL_BYTES {
            break;
        }
    }
    text
}

/// The levels the writer uses: `auto` becomes the trial's choice, or is dropped (the column
/// then takes `zstd_level`) when there was nothing to try.
pub fn resolve(
    levels: &BTreeMap<String, ColumnLevel>,
    trial: Option<&QualityTrial>,
) -> BTreeMap<String, i32> {
    levels
        .iter()
        .filter_map(|(column, level)| {
            let level = match level {
                ColumnLevel::Level(level) => *level,
                ColumnLevel::Auto(_) => trial?.choice(),
            };
            Some((column.clone(), level))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(bytes_at_level: usize, bytes_at_1: usize) -> QualityTrial {
        QualityTrial {
            sample_bytes: 1000,
            level: 3,
            bytes_at_level,
            bytes_at_1,
        }
    }

    #[test]
    fn auto_keeps_level_1_only_within_the_tolerance() {
        assert_eq!(trial(100, 90).choice(), 1);
        assert_eq!(trial(100, 102).choice(), 1);
        assert_eq!(trial(100, 103).choice(), 3);
    }

    #[test]
    fn resolve_replaces_auto_and_keeps_numbers() {
        let levels = BTreeMap::from([
            ("qual".to_owned(), ColumnLevel::AUTO),
            ("seq".to_owned(), ColumnLevel::Level(5)),
        ]);
        let with = resolve(&levels, Some(&trial(100, 150)));
        assert_eq!(
            with,
            BTreeMap::from([("qual".to_owned(), 3), ("seq".to_owned(), 5)])
        );
        let without = resolve(&levels, None);
        assert_eq!(without, BTreeMap::from([("seq".to_owned(), 5)]));
    }

    #[test]
    fn levels_parse_from_text() {
        assert_eq!("auto".parse::<ColumnLevel>(), Ok(ColumnLevel::AUTO));
        assert_eq!("7".parse::<ColumnLevel>(), Ok(ColumnLevel::Level(7)));
        assert!("high".parse::<ColumnLevel>().is_err());
    }
}

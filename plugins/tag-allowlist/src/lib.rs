//! Keeps records whose tag value is in an allowlist file: the single-cell case of keeping only
//! reads from called cells (`CB`), or from chosen samples, UMIs or read groups.
//!
//! Config: `{ tag = "CB", allowlist = "/etc/bamflow/barcodes.txt", keep_missing = false }`.
//! The file holds one value per line; blank lines and lines starting with `#` are skipped, and
//! surrounding whitespace is trimmed. Values must match exactly (10x barcodes keep their `-1`).
//! Records without the tag are dropped unless `keep_missing` is true. The tag may be of type
//! `Z` (string) or an integer type (compared as its decimal text).

use std::collections::HashSet;
use std::ffi::CStr;

use bamflow_plugin_api::{export_plugin, Batch, Filter, TagValue};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    tag: String,
    allowlist: String,
    #[serde(default)]
    keep_missing: bool,
}

/// The filter state: the tag to look at and the allowed values.
pub struct TagAllowlist {
    tag: [u8; 2],
    allowed: HashSet<Vec<u8>>,
    keep_missing: bool,
    /// Scratch space for integer values, reused across records.
    text: Vec<u8>,
}

impl TagAllowlist {
    /// Builds the filter from an allowlist already in memory (`text` in the file's format).
    ///
    /// # Errors
    ///
    /// When `tag` is not two characters.
    pub fn from_text(tag: &str, text: &str, keep_missing: bool) -> Result<Self, String> {
        let tag: [u8; 2] = tag
            .as_bytes()
            .try_into()
            .map_err(|_| format!("tag {tag:?} must be two characters, e.g. \"CB\""))?;
        let allowed = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| line.as_bytes().to_vec())
            .collect();
        Ok(Self {
            tag,
            allowed,
            keep_missing,
            text: Vec::new(),
        })
    }

    fn keeps(&mut self, value: Option<TagValue<'_>>) -> bool {
        match value {
            None => self.keep_missing,
            Some(TagValue::String(s)) => self.allowed.contains(s),
            Some(TagValue::Integer { value, .. }) => {
                self.text.clear();
                self.text.extend_from_slice(value.to_string().as_bytes());
                self.allowed.contains(&self.text)
            }
            Some(_) => false,
        }
    }
}

impl Filter for TagAllowlist {
    const NAME: &'static CStr = c"tag-allowlist";
    const VERSION: &'static CStr = c"1.0.0";

    fn new(config_json: &str, _sam_header: &str) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config_json)
            .map_err(|e| format!("config: {e} (expected tag, allowlist, keep_missing)"))?;
        let text = std::fs::read_to_string(&config.allowlist)
            .map_err(|e| format!("cannot read allowlist {}: {e}", config.allowlist))?;
        let filter = Self::from_text(&config.tag, &text, config.keep_missing)?;
        if filter.allowed.is_empty() {
            return Err(format!("allowlist {} is empty", config.allowlist));
        }
        Ok(filter)
    }

    fn filter(&mut self, batch: &Batch<'_>, keep: &mut [u8]) -> Result<(), String> {
        for (i, record) in batch.records().enumerate() {
            let record = record.map_err(|e| format!("record {i} of the batch: {e}"))?;
            let value = record
                .tags()
                .find(self.tag)
                .map_err(|e| format!("record {i} of the batch: {e}"))?;
            keep[i] = u8::from(self.keeps(value));
        }
        Ok(())
    }
}

export_plugin!(TagAllowlist);

#[cfg(test)]
mod tests {
    use bamflow_plugin_api::conformance::OwnedBatch;
    use bamflow_plugin_api::RecordBuilder;

    use super::*;

    fn mask(filter: &mut TagAllowlist, records: &[Vec<u8>]) -> Vec<u8> {
        let batch = OwnedBatch::from_records(records.iter().map(Vec::as_slice));
        let mut keep = vec![1; records.len()];
        let batch = Batch::new(&batch.data, &batch.offsets).unwrap();
        filter.filter(&batch, &mut keep).unwrap();
        keep
    }

    #[test]
    fn keeps_listed_values_and_drops_the_rest() {
        let mut filter =
            TagAllowlist::from_text("CB", "# cells\nAAAC-1\n\n  GGGT-1  \n", false).unwrap();
        let records = [
            RecordBuilder::new(b"a")
                .tag_string(*b"CB", "AAAC-1")
                .build(),
            RecordBuilder::new(b"b")
                .tag_string(*b"CB", "CCCC-1")
                .build(),
            RecordBuilder::new(b"c").build(),
            RecordBuilder::new(b"d")
                .tag_string(*b"CB", "GGGT-1")
                .build(),
        ];
        assert_eq!(mask(&mut filter, &records), [1, 0, 0, 1]);
        filter.keep_missing = true;
        assert_eq!(mask(&mut filter, &records), [1, 0, 1, 1]);
    }

    #[test]
    fn integer_tags_compare_as_text() {
        let mut filter = TagAllowlist::from_text("HI", "1\n", false).unwrap();
        let records = [
            RecordBuilder::new(b"a").tag_int(*b"HI", 1).build(),
            RecordBuilder::new(b"b").tag_int(*b"HI", 2).build(),
        ];
        assert_eq!(mask(&mut filter, &records), [1, 0]);
    }

    #[test]
    fn bad_config_says_what_is_wrong() {
        let err = TagAllowlist::new(r#"{"tag": "CB"}"#, "").err().unwrap();
        assert!(err.contains("allowlist"), "{err}");
        let err = TagAllowlist::from_text("CBX", "", false).err().unwrap();
        assert!(err.contains("two characters"), "{err}");
    }
}

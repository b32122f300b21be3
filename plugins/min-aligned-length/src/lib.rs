//! Keeps mapped records with at least `min_length` query bases aligned to the reference (CIGAR
//! `M`, `=`, `X`; from the `CG` tag for reads with over 65,535 operations): drops unmapped
//! reads and short or heavily clipped alignments, e.g. chimeric fragments of long reads.
//!
//! Config: `{ min_length = 500, keep_unmapped = false }`.

use std::ffi::CStr;

use bamflow_plugin_api::{export_plugin, Batch, Filter};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    min_length: u64,
    #[serde(default)]
    keep_unmapped: bool,
}

/// The filter state.
pub struct MinAlignedLength {
    min_length: u64,
    keep_unmapped: bool,
}

impl Filter for MinAlignedLength {
    const NAME: &'static CStr = c"min-aligned-length";
    const VERSION: &'static CStr = c"1.0.0";

    fn new(config_json: &str, _sam_header: &str) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config_json)
            .map_err(|e| format!("config: {e} (expected min_length, keep_unmapped)"))?;
        Ok(Self {
            min_length: config.min_length,
            keep_unmapped: config.keep_unmapped,
        })
    }

    fn filter(&mut self, batch: &Batch<'_>, keep: &mut [u8]) -> Result<(), String> {
        for (i, record) in batch.records().enumerate() {
            let record = record.map_err(|e| format!("record {i} of the batch: {e}"))?;
            keep[i] = u8::from(if record.is_unmapped() {
                self.keep_unmapped
            } else {
                let aligned = record
                    .aligned_length()
                    .map_err(|e| format!("record {i} of the batch: {e}"))?;
                aligned >= self.min_length
            });
        }
        Ok(())
    }
}

export_plugin!(MinAlignedLength);

#[cfg(test)]
mod tests {
    use bamflow_plugin_api::conformance::OwnedBatch;
    use bamflow_plugin_api::RecordBuilder;

    use super::*;

    #[test]
    fn counts_aligned_bases_only() {
        let mut filter = MinAlignedLength::new(r#"{"min_length": 100}"#, "").unwrap();
        let bases = vec![b'A'; 150];
        let read = |cigar: &[(u8, u32)]| {
            RecordBuilder::new(b"r")
                .reference(0, 10)
                .cigar(cigar)
                .sequence(&bases, &[])
                .build()
        };
        let records = [
            read(&[(b'M', 150)]),
            read(&[(b'S', 60), (b'M', 90)]),
            read(&[(b'M', 50), (b'I', 10), (b'=', 40), (b'X', 10), (b'S', 40)]),
            RecordBuilder::new(b"u").sequence(&bases, &[]).build(),
        ];
        let batch = OwnedBatch::from_records(records.iter().map(Vec::as_slice));
        let mut keep = vec![1; 4];
        filter
            .filter(&Batch::new(&batch.data, &batch.offsets).unwrap(), &mut keep)
            .unwrap();
        assert_eq!(keep, [1, 0, 1, 0]);
    }
}

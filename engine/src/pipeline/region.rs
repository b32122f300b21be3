//! Region queries through the BAI or CSI index: only the BGZF blocks that can hold records
//! overlapping a region are read, so time follows the region, not the file.
//!
//! The index maps each region to chunks (virtual-offset ranges); chunks of every region are
//! merged into one sorted list of disjoint ranges, read in file order. A record in the
//! overlap of two regions lies in one merged chunk, so it is read, and written, once. Chunks
//! also hold records near a region that do not overlap it; the region filter drops those.

use std::path::{Path, PathBuf};

use noodles_bgzf::VirtualPosition;
use noodles_core::Position;
use noodles_csi::binning_index::index::reference_sequence::bin::Chunk;
use noodles_csi::binning_index::{merge_chunks, BinningIndex};

use super::filter::{FilterError, Region};

/// A range of the input to read: records starting at or after `start` and before `end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub start: VirtualPosition,
    pub end: VirtualPosition,
}

/// The index files samtools would use for `bam`, in its order of preference.
fn index_candidates(bam: &Path) -> Vec<PathBuf> {
    let with = |suffix: &str| {
        let mut name = bam.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    vec![with(".bai"), with(".csi"), bam.with_extension("bai")]
}

/// The spans of `bam` that hold every record overlapping `regions`, merged, in file order;
/// `None` when the whole file must be read.
///
/// The unplaced records (`*`) come after every placed one in a sorted file: they are read from
/// the start of the last linear bin of the last reference with records (where noodles and
/// htslib start too) to the end, the region filter keeping those without a reference. An
/// index that knows no placed record at all leaves nothing to skip: the whole file is read.
///
/// # Errors
///
/// No index beside the file, an unreadable index, or a region naming a reference the file does
/// not have.
pub fn spans(
    bam: &Path,
    regions: &[Region],
    reference_names: &[String],
) -> Result<Option<Vec<Span>>, FilterError> {
    let region_error = |region: &Region, reason: String| FilterError::Region {
        region: region.to_string(),
        reason,
    };
    let Some(index_path) = index_candidates(bam).into_iter().find(|p| p.is_file()) else {
        let first = &regions[0];
        return Err(region_error(
            first,
            format!(
                "regions need an index: no {}.bai or .csi beside the file (samtools index makes one)",
                bam.display()
            ),
        ));
    };
    warn_if_stale(bam, &index_path);
    let index: Box<dyn BinningIndex> = if index_path.extension().is_some_and(|e| e == "csi") {
        Box::new(noodles_csi::fs::read(&index_path).map_err(|e| {
            region_error(
                &regions[0],
                format!("cannot read {}: {e}", index_path.display()),
            )
        })?)
    } else {
        Box::new(noodles_bam::bai::fs::read(&index_path).map_err(|e| {
            region_error(
                &regions[0],
                format!("cannot read {}: {e}", index_path.display()),
            )
        })?)
    };

    let mut chunks: Vec<Chunk> = Vec::new();
    for region in regions {
        if region.is_unplaced() {
            match index.last_first_record_start_position() {
                Some(start) => chunks.push(Chunk::new(start, VirtualPosition::MAX)),
                None => return Ok(None),
            }
            continue;
        }
        let id = reference_names
            .iter()
            .position(|name| *name == region.name)
            .ok_or_else(|| region_error(region, "the file has no such reference".to_owned()))?;
        let position = |n: u64| {
            usize::try_from(n)
                .ok()
                .and_then(Position::new)
                .ok_or_else(|| region_error(region, format!("position {n} is out of range")))
        };
        let start = position(region.start)?;
        let interval = match region.end {
            Some(end) => (start..=position(end)?).into(),
            None => (start..).into(),
        };
        let found = index
            .query(id, interval)
            .map_err(|e| region_error(region, format!("index query failed: {e}")))?;
        chunks.extend(found);
    }
    chunks.sort_by_key(Chunk::start);
    let spans = merge_chunks(&chunks)
        .into_iter()
        .map(|chunk| Span {
            start: chunk.start(),
            end: chunk.end(),
        })
        .collect();
    Ok(Some(spans))
}

/// samtools warns when the index is older than the data; so do we.
fn warn_if_stale(bam: &Path, index: &Path) {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(data), Some(index_time)) = (modified(bam), modified(index)) {
        if index_time < data {
            tracing::warn!(index = %index.display(), bam = %bam.display(), "The index is older than the BAM file; region results may be wrong.");
        }
    }
}

#[cfg(test)]
mod tests {
    use bamflow_tests::generator::{self, DataKind, Spec};
    use noodles_sam::alignment::Record as _;

    use super::*;

    /// Each record's start and, when placed, its reference and 1-based inclusive interval.
    type Placed = (VirtualPosition, Option<(usize, usize, usize)>);

    /// Writes a coordinate-sorted generated BAM and its BAI (built by noodles), and lists
    /// every record's start and placement: the oracle the index's spans must cover.
    fn indexed_bam(dir: &Path) -> (PathBuf, Vec<String>, Vec<Placed>) {
        let bam = dir.join("sorted.bam");
        generator::write_bam(&bam, &Spec::new(DataKind::Short, 20_000, 5)).unwrap();
        let mut bai = bam.as_os_str().to_owned();
        bai.push(".bai");
        match noodles_bam::fs::index(&bam).unwrap() {
            noodles_bam::Index::Bai(index) => noodles_bam::bai::fs::write(&bai, &index).unwrap(),
            noodles_bam::Index::Csi(_) => unreachable!("references under 2^29 get a BAI"),
        }

        let mut reader = noodles_bam::io::reader::Builder
            .build_from_path(&bam)
            .unwrap();
        let header = reader.read_header().unwrap();
        let names = header
            .reference_sequences()
            .keys()
            .map(|name| name.to_string())
            .collect();
        let mut records = Vec::new();
        let mut record = noodles_bam::Record::default();
        loop {
            let start = reader.get_ref().virtual_position();
            if reader.read_record(&mut record).unwrap() == 0 {
                break;
            }
            let placed = match (
                record.reference_sequence_id().transpose().unwrap(),
                record.alignment_start().transpose().unwrap(),
                record.alignment_end().transpose().unwrap(),
            ) {
                (Some(id), Some(start), Some(end)) => Some((id, start.get(), end.get())),
                _ => None,
            };
            records.push((start, placed));
        }
        (bam, names, records)
    }

    fn covered(spans: &[Span], at: VirtualPosition) -> bool {
        spans.iter().any(|s| s.start <= at && at < s.end)
    }

    #[test]
    fn spans_cover_every_overlapping_record_and_little_else() {
        let dir = tempfile::tempdir().unwrap();
        let (bam, names, records) = indexed_bam(dir.path());
        let region = Region::parse(&format!("{}:200000-260000", names[0])).unwrap();
        let spans = spans(&bam, std::slice::from_ref(&region), &names)
            .unwrap()
            .unwrap();
        assert!(
            spans.windows(2).all(|w| w[0].end < w[1].start),
            "sorted, disjoint"
        );
        let overlapping: Vec<_> = records
            .iter()
            .filter(|(_, placed)| {
                placed.is_some_and(|(id, start, end)| id == 0 && start <= 260_000 && end >= 200_000)
            })
            .collect();
        assert!(overlapping.len() > 100, "the region holds records");
        for (at, _) in &overlapping {
            assert!(covered(&spans, *at), "record at {at:?} not in {spans:?}");
        }
        let read = records
            .iter()
            .filter(|(at, _)| covered(&spans, *at))
            .count();
        assert!(
            read < records.len() / 4,
            "{read} of {} records read",
            records.len()
        );
    }

    #[test]
    fn the_unplaced_span_runs_to_the_end_and_holds_every_unplaced_record() {
        let dir = tempfile::tempdir().unwrap();
        let (bam, names, records) = indexed_bam(dir.path());
        let unplaced = Region::parse("*").unwrap();
        let spans = spans(&bam, &[unplaced], &names).unwrap().unwrap();
        assert_eq!(spans.last().map(|s| s.end), Some(VirtualPosition::MAX));
        let without: Vec<_> = records.iter().filter(|(_, p)| p.is_none()).collect();
        assert!(!without.is_empty(), "the generator makes unplaced reads");
        for (at, _) in without {
            assert!(covered(&spans, *at));
        }
    }

    #[test]
    fn no_index_and_an_unknown_reference_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (bam, names, _) = indexed_bam(dir.path());
        let unknown = Region::parse("chrUn").unwrap();
        let error = spans(&bam, &[unknown], &names).unwrap_err().to_string();
        assert!(
            error.contains("chrUn") && error.contains("no such reference"),
            "{error}"
        );

        let copy = dir.path().join("unindexed.bam");
        std::fs::copy(&bam, &copy).unwrap();
        let region = Region::parse(&names[0]).unwrap();
        let error = spans(&copy, &[region], &names).unwrap_err().to_string();
        assert!(error.contains("regions need an index"), "{error}");
    }
}

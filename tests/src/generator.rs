//! A deterministic generator of realistic BAM files, written through noodles' BAM writer.
//!
//! Reads are sampled from a synthetic genome, so sequences, CIGARs, `NM` and `MD` agree with
//! each other as an aligner's would, and the data compresses like real data (reads overlap,
//! qualities follow an instrument-like profile). Everything derives from the seed: the same
//! arguments always give the same bytes.

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::Path;

use noodles_bam as bam;
use noodles_core::Position;
use noodles_sam::alignment::io::Write as _;
use noodles_sam::alignment::record::cigar::op::{Kind, Op};
use noodles_sam::alignment::record::data::field::Tag;
use noodles_sam::alignment::record::{Flags, MappingQuality};
use noodles_sam::alignment::record_buf::data::field::value::Array;
use noodles_sam::alignment::record_buf::data::field::Value;
use noodles_sam::alignment::record_buf::{Cigar, Data, QualityScores, Sequence};
use noodles_sam::alignment::RecordBuf;
use noodles_sam::{self as sam};

/// What kind of data to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKind {
    /// Coordinate-sorted 2×150 paired short reads with aligner tags, secondary, supplementary,
    /// placed-unmapped and unmapped records.
    Short,
    /// ONT-like long reads with many CIGAR operations and base-modification tags.
    Long,
    /// Unaligned single-cell reads with `CB`/`UB` tags.
    Unaligned,
}

/// Settings of one generated file.
#[derive(Clone, Debug)]
pub struct Spec {
    pub kind: DataKind,
    /// Records to write (approximately for paired data: whole pairs are written).
    pub records: usize,
    pub seed: u64,
    /// Longest long read; reads over ~650 kbp need more than 65,535 CIGAR ops (a `CG` tag).
    pub max_read_length: usize,
}

impl Spec {
    pub fn new(kind: DataKind, records: usize, seed: u64) -> Self {
        Self {
            kind,
            records,
            seed,
            max_read_length: 200_000,
        }
    }
}

/// SplitMix64: tiny, fast, and good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn base(&mut self) -> u8 {
        b"ACGT"[self.below(4)]
    }
}

/// Writes a generated BAM to `path`.
///
/// # Errors
///
/// Returns an I/O error when the file cannot be written.
pub fn write_bam(path: &Path, spec: &Spec) -> io::Result<()> {
    let file = BufWriter::new(File::create(path)?);
    let mut writer = bam::io::Writer::new(file);
    let mut rng = Rng::new(spec.seed);
    let genome = Genome::new(&mut rng, spec);
    let header = header(spec, &genome);
    writer.write_header(&header)?;

    let mut emit = |record: RecordBuf| writer.write_alignment_record(&header, &record);
    match spec.kind {
        DataKind::Short => short_reads(&mut rng, &genome, spec.records, &mut emit)?,
        DataKind::Long => long_reads(&mut rng, &genome, spec, &mut emit)?,
        DataKind::Unaligned => unaligned_reads(&mut rng, spec.records, &mut emit)?,
    }
    writer.try_finish()
}

/// Synthetic reference contigs.
struct Genome {
    contigs: Vec<(String, Vec<u8>)>,
}

impl Genome {
    fn new(rng: &mut Rng, spec: &Spec) -> Self {
        let lengths: Vec<usize> = match spec.kind {
            DataKind::Short => vec![2_000_000, 1_200_000, 800_000],
            DataKind::Long => vec![(spec.max_read_length * 2).max(1_500_000), 1_000_000],
            DataKind::Unaligned => vec![],
        };
        let contigs = lengths
            .into_iter()
            .enumerate()
            .map(|(i, len)| {
                (
                    format!("chr{}", i + 1),
                    (0..len).map(|_| rng.base()).collect(),
                )
            })
            .collect();
        Self { contigs }
    }
}

fn header(spec: &Spec, genome: &Genome) -> sam::Header {
    let mut text = String::new();
    let sort = if spec.kind == DataKind::Unaligned {
        "unsorted"
    } else {
        "coordinate"
    };
    text.push_str(&format!("@HD\tVN:1.6\tSO:{sort}\n"));
    for (name, seq) in &genome.contigs {
        text.push_str(&format!("@SQ\tSN:{name}\tLN:{}\n", seq.len()));
    }
    for rg in 0..2 {
        text.push_str(&format!(
            "@RG\tID:rg{rg}\tSM:sample-{}\tPL:ILLUMINA\tLB:lib{rg}\n",
            spec.seed
        ));
    }
    text.push_str("@PG\tID:bamgen\tPN:bamgen\tVN:1\tCL:bamgen --deterministic\n");
    text.push_str("@CO\tGenerated by bamflow-tests for conversion tests.\n");
    // The text is built above from valid lines, so it always parses.
    text.parse().unwrap_or_default()
}

/// An alignment of a read against the genome: what an aligner would report.
struct Alignment {
    contig: usize,
    start: usize,
    ops: Vec<Op>,
    sequence: Vec<u8>,
    edit_distance: usize,
    md: String,
}

/// Mutation rates of the simulated reads.
struct ErrorModel {
    mismatch: f64,
    insertion: f64,
    deletion: f64,
    /// Report mismatches as `X` and matches as `=` instead of `M`.
    extended_cigar: bool,
}

impl ErrorModel {
    /// The CIGAR op of one aligned base: `=`/`X` in extended CIGARs, `M` otherwise.
    fn aligned_kind(&self, matches: bool) -> Kind {
        match (self.extended_cigar, matches) {
            (false, _) => Kind::Match,
            (true, true) => Kind::SequenceMatch,
            (true, false) => Kind::SequenceMismatch,
        }
    }
}

/// Simulates a read of about `len` bases from `contig` at `start`.
fn align(
    rng: &mut Rng,
    genome: &Genome,
    contig: usize,
    start: usize,
    len: usize,
    model: &ErrorModel,
) -> Alignment {
    let reference = &genome.contigs[contig].1;
    let mut ops: Vec<Op> = Vec::new();
    let mut sequence = Vec::with_capacity(len + 16);
    let mut md = String::new();
    let mut md_run = 0;
    let mut edit_distance = 0;
    let mut ref_pos = start;

    let push = |ops: &mut Vec<Op>, kind: Kind, n: usize| match ops.last_mut() {
        Some(last) if last.kind() == kind => *last = Op::new(kind, last.len() + n),
        _ => ops.push(Op::new(kind, n)),
    };

    while sequence.len() < len && ref_pos < reference.len() {
        let r = rng.unit();
        if r < model.insertion && !sequence.is_empty() {
            let n = 1 + rng.below(4);
            for _ in 0..n {
                sequence.push(rng.base());
            }
            push(&mut ops, Kind::Insertion, n);
            edit_distance += n;
        } else if r < model.insertion + model.deletion && !sequence.is_empty() {
            let n = (1 + rng.below(4)).min(reference.len() - ref_pos);
            md.push_str(&md_run.to_string());
            md.push('^');
            md.push_str(std::str::from_utf8(&reference[ref_pos..ref_pos + n]).unwrap_or("N"));
            md_run = 0;
            ref_pos += n;
            push(&mut ops, Kind::Deletion, n);
            edit_distance += n;
        } else {
            let ref_base = reference[ref_pos];
            if rng.chance(model.mismatch) {
                let alt = b"ACGT"[(b"ACGT".iter().position(|&b| b == ref_base).unwrap_or(0)
                    + 1
                    + rng.below(3))
                    % 4];
                sequence.push(alt);
                md.push_str(&md_run.to_string());
                md.push(char::from(ref_base));
                md_run = 0;
                edit_distance += 1;
                push(&mut ops, model.aligned_kind(false), 1);
            } else {
                sequence.push(ref_base);
                md_run += 1;
                push(&mut ops, model.aligned_kind(true), 1);
            }
            ref_pos += 1;
        }
    }
    md.push_str(&md_run.to_string());
    Alignment {
        contig,
        start,
        ops,
        sequence,
        edit_distance,
        md,
    }
}

/// Illumina-like qualities: high at the start, decaying along the read, with dips.
fn illumina_qualities(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let decay = (i as f64 / len as f64) * 8.0;
            let dip = if rng.chance(0.02) { 20.0 } else { 0.0 };
            let noise = rng.unit() * 4.0;
            (40.0 - decay - dip - noise).clamp(2.0, 41.0) as u8
        })
        .collect()
}

fn nanopore_qualities(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut q = 15.0;
    (0..len)
        .map(|_| {
            q = (q + (rng.unit() - 0.5) * 6.0).clamp(3.0, 40.0);
            q as u8
        })
        .collect()
}

fn soft_clip(rng: &mut Rng, alignment: &mut Alignment) {
    let n = 5 + rng.below(25);
    let clip: Vec<u8> = (0..n).map(|_| rng.base()).collect();
    if rng.chance(0.5) {
        alignment.sequence.splice(0..0, clip);
        alignment.ops.insert(0, Op::new(Kind::SoftClip, n));
    } else {
        alignment.sequence.extend(clip);
        alignment.ops.push(Op::new(Kind::SoftClip, n));
    }
}

fn illumina_name(rng: &mut Rng, serial: usize) -> String {
    format!(
        "A00{}:8:H7KJLDSXX:{}:{}:{}:{}",
        100 + rng.below(50),
        1 + rng.below(4),
        1101 + rng.below(500),
        serial % 32_000,
        1000 + rng.below(30_000)
    )
}

fn position(p: usize) -> Option<Position> {
    Position::new(p + 1)
}

fn short_reads(
    rng: &mut Rng,
    genome: &Genome,
    records: usize,
    emit: &mut impl FnMut(RecordBuf) -> io::Result<()>,
) -> io::Result<()> {
    const READ_LEN: usize = 150;
    let mut written = 0;
    let mut serial = 0;
    let unmapped_tail = records / 200;
    let total_ref: usize = genome.contigs.iter().map(|c| c.1.len()).sum();
    let step = (total_ref as f64 / (records.max(1) as f64 / 2.0)).max(0.01);
    let mut cursor = 0.0f64;
    let mut contig = 0;
    let mut pending: Vec<RecordBuf> = Vec::new(); // mates waiting for their sorted position

    while written + unmapped_tail < records && contig < genome.contigs.len() {
        cursor += step * rng.unit() * 2.0;
        let contig_len = genome.contigs[contig].1.len();
        if cursor as usize + 1200 >= contig_len {
            // The mates still waiting end the contig, in position order too.
            pending.sort_by_key(|r| r.alignment_start());
            for mate in pending.drain(..) {
                emit(mate)?;
                written += 1;
            }
            contig += 1;
            cursor = 0.0;
            continue;
        }
        let start = cursor as usize;

        // Mates whose position is now behind the cursor can be written in sorted order.
        pending.sort_by_key(|r| r.alignment_start());
        while let Some(first) = pending.first() {
            if first
                .alignment_start()
                .is_some_and(|p| usize::from(p) <= start + 1)
            {
                emit(pending.remove(0))?;
                written += 1;
            } else {
                break;
            }
        }

        serial += 1;
        let name = illumina_name(rng, serial);
        let insert = 250 + rng.below(300);
        let mate_start = start + insert - READ_LEN;
        let rg = format!("rg{}", rng.below(2));
        let model = ErrorModel {
            mismatch: 0.004,
            insertion: 0.0004,
            deletion: 0.0004,
            extended_cigar: rng.chance(0.02),
        };

        let mut first = align(rng, genome, contig, start, READ_LEN, &model);
        let mut second = align(rng, genome, contig, mate_start, READ_LEN, &model);
        if rng.chance(0.1) {
            soft_clip(rng, &mut first);
        }
        if rng.chance(0.05) {
            soft_clip(rng, &mut second);
        }
        let second_unmapped = rng.chance(0.01);
        let reverse_first = rng.chance(0.5);
        let mapq = if rng.chance(0.9) {
            60
        } else {
            rng.below(60) as u8
        };
        let tlen = (second.start + ref_span(&second.ops)) as i32 - first.start as i32;

        let mut pair_flags = |is_first: bool,
                              reverse: bool,
                              mate_reverse: bool,
                              self_unmapped: bool,
                              mate_unmapped: bool| {
            let mut f = Flags::SEGMENTED
                | if is_first {
                    Flags::FIRST_SEGMENT
                } else {
                    Flags::LAST_SEGMENT
                };
            if !self_unmapped && !mate_unmapped {
                f |= Flags::PROPERLY_SEGMENTED;
            }
            if reverse {
                f |= Flags::REVERSE_COMPLEMENTED;
            }
            if mate_reverse {
                f |= Flags::MATE_REVERSE_COMPLEMENTED;
            }
            if self_unmapped {
                f |= Flags::UNMAPPED;
            }
            if mate_unmapped {
                f |= Flags::MATE_UNMAPPED;
            }
            if rng.chance(0.03) {
                f |= Flags::DUPLICATE;
            }
            if rng.chance(0.005) {
                f |= Flags::QC_FAIL;
            }
            f
        };

        let first_flags = pair_flags(true, reverse_first, !reverse_first, false, second_unmapped);
        let second_flags = pair_flags(false, !reverse_first, reverse_first, second_unmapped, false);
        let first_record = mapped_record(
            rng,
            &name,
            first_flags,
            &first,
            mapq,
            &rg,
            (contig, second.start),
            if second_unmapped { 0 } else { tlen },
        );
        emit(first_record)?;
        written += 1;

        if second_unmapped {
            // Placed unmapped: the mate's position, no CIGAR, MAPQ 0 (SAMv1 §2.4).
            let qualities = illumina_qualities(rng, READ_LEN);
            let record = RecordBuf::builder()
                .set_name(name.as_str())
                .set_flags(second_flags)
                .set_reference_sequence_id(contig)
                .set_alignment_start(position(first.start).unwrap_or(Position::MIN))
                .set_mapping_quality(MappingQuality::new(0).unwrap_or(MappingQuality::MIN))
                .set_mate_reference_sequence_id(contig)
                .set_mate_alignment_start(position(first.start).unwrap_or(Position::MIN))
                .set_sequence(Sequence::from(
                    second.sequence[..READ_LEN.min(second.sequence.len())].to_vec(),
                ))
                .set_quality_scores(QualityScores::from(
                    qualities[..READ_LEN.min(second.sequence.len())].to_vec(),
                ))
                .set_data(
                    [(Tag::READ_GROUP, Value::from(rg.as_str()))]
                        .into_iter()
                        .collect(),
                )
                .build();
            pending.push(record);
        } else {
            pending.push(mapped_record(
                rng,
                &name,
                second_flags,
                &second,
                mapq,
                &rg,
                (contig, first.start),
                -tlen,
            ));
        }

        if rng.chance(0.01) {
            // A supplementary piece of the first read, hard-clipped, with an SA tag both ways.
            let sup = align(rng, genome, contig, start + 40, 60, &model);
            let mut ops = vec![Op::new(Kind::HardClip, 90)];
            ops.extend(sup.ops.iter().copied());
            let flags = first_flags | Flags::SUPPLEMENTARY;
            let sa = format!("chr{},{},+,90S60M,{mapq},0;", contig + 1, start + 1);
            let data: Data = [
                (Tag::EDIT_DISTANCE, Value::from(sup.edit_distance as i32)),
                (Tag::MISMATCHED_POSITIONS, Value::from(sup.md.as_str())),
                (Tag::ALIGNMENT_SCORE, Value::from(55)),
                (Tag::READ_GROUP, Value::from(rg.as_str())),
                (Tag::OTHER_ALIGNMENTS, Value::from(sa.as_str())),
            ]
            .into_iter()
            .collect();
            let record = RecordBuf::builder()
                .set_name(name.as_str())
                .set_flags(flags)
                .set_reference_sequence_id(contig)
                .set_alignment_start(position(sup.start).unwrap_or(Position::MIN))
                .set_mapping_quality(MappingQuality::new(30).unwrap_or(MappingQuality::MIN))
                .set_cigar(Cigar::from(ops))
                .set_mate_reference_sequence_id(contig)
                .set_mate_alignment_start(position(second.start).unwrap_or(Position::MIN))
                .set_sequence(Sequence::from(sup.sequence.clone()))
                .set_quality_scores(QualityScores::from(illumina_qualities(
                    rng,
                    sup.sequence.len(),
                )))
                .set_data(data)
                .build();
            pending.push(record);
        }
        if rng.chance(0.01) {
            // A secondary alignment: no SEQ or QUAL, as minimap2 writes them.
            let flags = first_flags | Flags::SECONDARY;
            let data: Data = [
                (Tag::EDIT_DISTANCE, Value::from(first.edit_distance as i32)),
                (Tag::ALIGNMENT_SCORE, Value::from(120)),
            ]
            .into_iter()
            .collect();
            let record = RecordBuf::builder()
                .set_name(name.as_str())
                .set_flags(flags)
                .set_reference_sequence_id(contig)
                .set_alignment_start(position(start + 7).unwrap_or(Position::MIN))
                .set_mapping_quality(MappingQuality::new(0).unwrap_or(MappingQuality::MIN))
                .set_cigar(Cigar::from(vec![Op::new(Kind::Match, READ_LEN)]))
                .set_data(data)
                .build();
            pending.push(record);
        }
    }
    pending.sort_by_key(|r| r.alignment_start());
    for mate in pending {
        emit(mate)?;
    }

    // Unplaced, unmapped pairs sort last.
    for i in 0..unmapped_tail {
        let name = illumina_name(rng, serial + i);
        let seq: Vec<u8> = (0..READ_LEN).map(|_| rng.base()).collect();
        let flags = Flags::SEGMENTED
            | Flags::UNMAPPED
            | Flags::MATE_UNMAPPED
            | if i % 2 == 0 {
                Flags::FIRST_SEGMENT
            } else {
                Flags::LAST_SEGMENT
            };
        let record = RecordBuf::builder()
            .set_name(name.as_str())
            .set_flags(flags)
            .set_mapping_quality(MappingQuality::new(0).unwrap_or(MappingQuality::MIN))
            .set_sequence(Sequence::from(seq))
            .set_quality_scores(QualityScores::from(illumina_qualities(rng, READ_LEN)))
            .set_data(
                [(Tag::READ_GROUP, Value::from("rg0"))]
                    .into_iter()
                    .collect(),
            )
            .build();
        emit(record)?;
    }
    Ok(())
}

fn ref_span(ops: &[Op]) -> usize {
    ops.iter()
        .filter(|op| {
            matches!(
                op.kind(),
                Kind::Match
                    | Kind::Deletion
                    | Kind::Skip
                    | Kind::SequenceMatch
                    | Kind::SequenceMismatch
            )
        })
        .map(|op| op.len())
        .sum()
}

#[allow(clippy::too_many_arguments)]
fn mapped_record(
    rng: &mut Rng,
    name: &str,
    flags: Flags,
    a: &Alignment,
    mapq: u8,
    rg: &str,
    mate: (usize, usize),
    tlen: i32,
) -> RecordBuf {
    let score = a.sequence.len() as i32 - 6 * a.edit_distance as i32;
    let mut fields = vec![
        (Tag::EDIT_DISTANCE, Value::from(a.edit_distance as i32)),
        (Tag::MISMATCHED_POSITIONS, Value::from(a.md.as_str())),
        (Tag::ALIGNMENT_SCORE, Value::from(score)),
    ];
    if rng.chance(0.7) {
        fields.push((
            Tag::new(b'X', b'S'),
            Value::from(score - 10 - rng.below(40) as i32),
        ));
    }
    fields.push((Tag::READ_GROUP, Value::from(rg)));
    let qualities = illumina_qualities(rng, a.sequence.len());
    RecordBuf::builder()
        .set_name(name)
        .set_flags(flags)
        .set_reference_sequence_id(a.contig)
        .set_alignment_start(position(a.start).unwrap_or(Position::MIN))
        .set_mapping_quality(MappingQuality::new(mapq).unwrap_or(MappingQuality::MIN))
        .set_cigar(Cigar::from(a.ops.clone()))
        .set_mate_reference_sequence_id(mate.0)
        .set_mate_alignment_start(position(mate.1).unwrap_or(Position::MIN))
        .set_template_length(tlen)
        .set_sequence(Sequence::from(a.sequence.clone()))
        .set_quality_scores(QualityScores::from(qualities))
        .set_data(fields.into_iter().collect())
        .build()
}

fn long_reads(
    rng: &mut Rng,
    genome: &Genome,
    spec: &Spec,
    emit: &mut impl FnMut(RecordBuf) -> io::Result<()>,
) -> io::Result<()> {
    let model = ErrorModel {
        mismatch: 0.03,
        insertion: 0.02,
        deletion: 0.02,
        extended_cigar: false,
    };
    let mut starts: Vec<(usize, usize, usize)> = (0..spec.records)
        .map(|i| {
            // Log-normal-ish lengths around 8 kbp; the first read is the longest allowed.
            let len = if i == 0 {
                spec.max_read_length
            } else {
                ((8_000.0 * (rng.unit() * 2.5).exp() * rng.unit().max(0.1)) as usize)
                    .clamp(200, spec.max_read_length)
            };
            let contig = if len > genome.contigs[1].1.len() - 10 {
                0
            } else {
                rng.below(genome.contigs.len())
            };
            let start = rng.below(genome.contigs[contig].1.len() - len - 10);
            (contig, start, len)
        })
        .collect();
    starts.sort();

    for (serial, (contig, start, len)) in starts.into_iter().enumerate() {
        let mut a = align(rng, genome, contig, start, len, &model);
        soft_clip(rng, &mut a);
        let qualities = nanopore_qualities(rng, a.sequence.len());
        let divergence = a.edit_distance as f32 / a.sequence.len() as f32;
        let mods: Vec<u8> = (0..a.sequence.iter().filter(|&&b| b == b'C').count().min(2000))
            .map(|_| rng.below(256) as u8)
            .collect();
        let mm = format!("C+m?,{};", vec!["0"; mods.len()].join(","));
        let flags = if rng.chance(0.5) {
            Flags::REVERSE_COMPLEMENTED
        } else {
            Flags::empty()
        } | if rng.chance(0.05) {
            Flags::SUPPLEMENTARY
        } else {
            Flags::empty()
        };
        let data: Data = [
            (Tag::new(b't', b'p'), Value::Character(b'P')),
            (Tag::new(b'c', b'm'), Value::from(rng.below(2000) as i32)),
            (Tag::new(b's', b'1'), Value::from(rng.below(60_000) as i32)),
            (Tag::EDIT_DISTANCE, Value::from(a.edit_distance as i32)),
            (
                Tag::ALIGNMENT_SCORE,
                Value::from(a.sequence.len() as i32 - 2 * a.edit_distance as i32),
            ),
            (Tag::new(b'd', b'e'), Value::Float(divergence)),
            (Tag::new(b'r', b'l'), Value::from(0)),
            (Tag::BASE_MODIFICATIONS, Value::from(mm.as_str())),
            (
                Tag::BASE_MODIFICATION_PROBABILITIES,
                Value::Array(Array::UInt8(mods)),
            ),
        ]
        .into_iter()
        .collect();
        let record = RecordBuf::builder()
            .set_name(format!(
                "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
                rng.next_u64() as u32,
                serial % 65536,
                rng.below(4096),
                rng.below(4096),
                rng.next_u64() & 0xffff_ffff_ffff
            ))
            .set_flags(flags)
            .set_reference_sequence_id(contig)
            .set_alignment_start(position(start).unwrap_or(Position::MIN))
            .set_mapping_quality(MappingQuality::new(60).unwrap_or(MappingQuality::MIN))
            .set_cigar(Cigar::from(a.ops))
            .set_sequence(Sequence::from(a.sequence))
            .set_quality_scores(QualityScores::from(qualities))
            .set_data(data)
            .build();
        emit(record)?;
    }
    Ok(())
}

fn unaligned_reads(
    rng: &mut Rng,
    records: usize,
    emit: &mut impl FnMut(RecordBuf) -> io::Result<()>,
) -> io::Result<()> {
    let barcodes: Vec<String> = (0..500)
        .map(|_| (0..16).map(|_| char::from(rng.base())).collect())
        .collect();
    for serial in 0..records {
        let cell = &barcodes[rng.below(barcodes.len()).min(rng.below(barcodes.len()))];
        let umi: String = (0..12).map(|_| char::from(rng.base())).collect();
        let len = 90;
        let sequence: Vec<u8> = (0..len).map(|_| rng.base()).collect();
        let corrected = format!("{cell}-1");
        let data: Data = [
            (Tag::CELL_BARCODE_SEQUENCE, Value::from(cell.as_str())),
            (
                Tag::CELL_BARCODE_QUALITY_SCORES,
                Value::from("FFFFFFFFFFFFFFFF"),
            ),
            (Tag::CELL_BARCODE_ID, Value::from(corrected.as_str())),
            (Tag::UMI_SEQUENCE, Value::from(umi.as_str())),
            (Tag::UMI_QUALITY_SCORES, Value::from("FFFFFFFFFFFF")),
            (Tag::UMI_ID, Value::from(umi.as_str())),
            (Tag::READ_GROUP, Value::from("rg0")),
        ]
        .into_iter()
        .collect();
        let record = RecordBuf::builder()
            .set_name(illumina_name(rng, serial))
            .set_flags(Flags::UNMAPPED)
            .set_mapping_quality(MappingQuality::new(0).unwrap_or(MappingQuality::MIN))
            .set_sequence(Sequence::from(sequence))
            .set_quality_scores(QualityScores::from(illumina_qualities(rng, len)))
            .set_data(data)
            .build();
        emit(record)?;
    }
    Ok(())
}

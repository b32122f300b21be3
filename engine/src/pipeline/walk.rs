//! A walk through a run's records, made by the job that inflates the run, block by block
//! while the bytes are still in that core's cache.
//!
//! Where a run's first record starts is known only once the run before it has been framed, so
//! the job guesses: the first offset from which a few records in a row look like BAM
//! records. The reader keeps the walk only when it passes through the offset where the reader
//! knows a record starts ([`super::in_place`]); from any true record start on, a walk is
//! determined by the `block_size` fields alone, so a wrong guess costs the reader its own walk,
//! never a wrong record.
//!
//! Walking in the reader instead cost a cache miss per record (the run was inflated on another
//! core): 0.3 s of the reader's 0.55 s on 9 M short reads, and the reader is the conversion's
//! serial bound.

/// Offsets tried as the first record's start: a record that runs on from the run before
/// usually ends within this, and a long read that does not is walked by the reader (a run
/// holds few of them).
const GUESS_WINDOW: usize = 64 << 10;
/// Records in a row that must look right for a guess.
const GUESS_RECORDS: usize = 3;

/// What the bytes at an offset say about a guess.
enum Verdict {
    Yes,
    No,
    /// Not enough of the run is inflated yet to tell.
    NeedMore,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Guessing { candidate: usize },
    Walking,
    Stopped,
}

/// The walk of one run as its blocks inflate.
pub(super) struct Walk {
    max_record_bytes: usize,
    /// Record boundaries found: each entry but the last starts a record that ends at the next
    /// entry; the last is where the walk stopped (the run's end, a record running past it, or
    /// a `block_size` out of bounds).
    chain: Vec<u32>,
    state: State,
}

impl Walk {
    /// Starts a walk, keeping its boundaries in `chain` (cleared; reused from an earlier run).
    pub fn new(mut chain: Vec<u32>, max_record_bytes: usize) -> Self {
        chain.clear();
        Self {
            max_record_bytes,
            chain,
            state: State::Guessing { candidate: 0 },
        }
    }

    /// Goes on through `data`, the run's bytes inflated so far; `whole` when that is all of
    /// them.
    pub fn feed(&mut self, data: &[u8], whole: bool) {
        if let State::Guessing { mut candidate } = self.state {
            loop {
                if candidate >= GUESS_WINDOW || candidate >= data.len() && whole {
                    self.state = State::Stopped;
                    return;
                }
                if candidate >= data.len() {
                    self.state = State::Guessing { candidate };
                    return;
                }
                match self.looks_like_records(data, candidate, whole) {
                    Verdict::Yes => break,
                    Verdict::No => candidate += 1,
                    Verdict::NeedMore => {
                        self.state = State::Guessing { candidate };
                        return;
                    }
                }
            }
            self.chain.push(candidate as u32);
            self.state = State::Walking;
        }
        if self.state == State::Walking {
            self.walk(data);
        }
    }

    /// The boundaries found; empty when no start was guessed.
    pub fn into_chain(self) -> Vec<u32> {
        self.chain
    }

    /// Follows `block_size` fields from the last boundary while whole records are inflated.
    fn walk(&mut self, data: &[u8]) {
        let Some(&last) = self.chain.last() else {
            return;
        };
        let mut at = last as usize;
        while let Some(&[a, b, c, d]) = data.get(at..at + 4) {
            let size = u32::from_le_bytes([a, b, c, d]) as usize;
            if !(32..=self.max_record_bytes).contains(&size) {
                self.state = State::Stopped;
                return;
            }
            let next = at + 4 + size;
            if next > data.len() {
                return;
            }
            at = next;
            self.chain.push(at as u32);
        }
    }

    /// Whether [`GUESS_RECORDS`] records in a row from `at` have plausible fixed fields
    /// (SAMv1 §4.2): sizes that add up, no position or reference below -1, a read name that
    /// ends in NUL where its length says. Records running past the run count when the run is
    /// whole.
    fn looks_like_records(&self, data: &[u8], mut at: usize, whole: bool) -> Verdict {
        let short = if whole {
            Verdict::Yes
        } else {
            Verdict::NeedMore
        };
        for _ in 0..GUESS_RECORDS {
            let Some(fixed) = data.get(at..at + 36) else {
                return short;
            };
            let u32_at =
                |i: usize| u32::from_le_bytes([fixed[i], fixed[i + 1], fixed[i + 2], fixed[i + 3]]);
            let size = u32_at(0) as usize;
            if !(32..=self.max_record_bytes).contains(&size) {
                return Verdict::No;
            }
            let below_minus_one = [4, 8, 24, 28].into_iter().any(|i| (u32_at(i) as i32) < -1);
            let name_len = usize::from(fixed[12]);
            let cigar_len = usize::from(u16::from_le_bytes([fixed[16], fixed[17]])) * 4;
            let sequence_len = u32_at(20) as usize;
            let fields = 32 + name_len + cigar_len + sequence_len.div_ceil(2) + sequence_len;
            if below_minus_one || name_len == 0 || fields > size {
                return Verdict::No;
            }
            match data.get(at + 4 + 32 + name_len - 1) {
                Some(0) => {}
                Some(_) => return Verdict::No,
                None => return short,
            }
            at += 4 + size;
        }
        Verdict::Yes
    }
}

#[cfg(test)]
mod tests {
    use bamflow_plugin_api::RecordBuilder;

    use super::*;

    /// Records as BAM stores them, each behind its `block_size`.
    fn stream(records: usize, bases: usize) -> (Vec<u8>, Vec<u32>) {
        let mut raw = Vec::new();
        let mut starts = vec![0];
        for i in 0..records {
            let record = RecordBuilder::new(format!("read{i}").as_bytes())
                .sequence(&b"ACGT".repeat(bases / 4), &vec![30; bases])
                .build();
            raw.extend_from_slice(&(record.len() as u32).to_le_bytes());
            raw.extend_from_slice(&record);
            starts.push(raw.len() as u32);
        }
        (raw, starts)
    }

    /// Feeds `data` as blocks of `block` bytes.
    fn walk(data: &[u8], block: usize) -> Vec<u32> {
        let mut walk = Walk::new(Vec::new(), 1 << 20);
        let mut end = 0;
        while end < data.len() {
            end = (end + block).min(data.len());
            walk.feed(&data[..end], end == data.len());
        }
        walk.into_chain()
    }

    #[test]
    fn a_run_that_starts_mid_record_is_walked_from_the_next_record() {
        let (raw, starts) = stream(200, 150);
        // The run starts 100 bytes into record 3 and ends inside record 190.
        let (from, to) = (starts[3] as usize + 100, starts[190] as usize + 50);
        let chain = walk(&raw[from..to], 4096);
        let expected: Vec<u32> = starts[4..=190].iter().map(|&s| s - from as u32).collect();
        assert_eq!(chain, expected);
    }

    #[test]
    fn the_walk_is_the_same_whatever_the_blocks() {
        let (raw, starts) = stream(50, 1000);
        for block in [7, 100, 65_536] {
            assert_eq!(walk(&raw, block), starts, "blocks of {block} bytes");
        }
    }

    #[test]
    fn a_long_record_covering_the_run_gives_no_walk() {
        let (raw, starts) = stream(3, 200_000);
        let (from, to) = (starts[1] as usize + 10, starts[1] as usize + 150_000);
        assert!(walk(&raw[from..to], 65_536).is_empty());
    }

    #[test]
    fn a_size_out_of_bounds_stops_the_walk_there() {
        let (mut raw, starts) = stream(20, 150);
        let bad = starts[10] as usize;
        raw[bad..bad + 4].copy_from_slice(&8u32.to_le_bytes());
        assert_eq!(walk(&raw, 65_536), starts[..=10]);
    }
}

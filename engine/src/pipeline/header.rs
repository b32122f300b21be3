//! The BAM header (SAMv1 §4.2): magic, SAM header text and the binary reference list.

use std::io::Read;
use std::sync::Arc;

use super::bgzf::{BgzfError, BgzfStream};

/// Upper bounds on what a header may claim, so a corrupt length is refused, not allocated.
#[derive(Clone, Copy, Debug)]
pub struct HeaderLimits {
    /// Largest header (text plus reference list) accepted, in bytes.
    pub max_header_bytes: usize,
}

/// A parsed BAM header.
#[derive(Debug)]
pub struct BamHeader {
    /// The SAM header as `samtools view -H --no-PG` prints it (see `sam_header_text`).
    pub text: String,
    /// Reference sequence names, indexed by `refID`.
    pub reference_names: Arc<[String]>,
    /// Reference sequence lengths, indexed by `refID`.
    pub reference_lengths: Vec<u32>,
    /// Where the first record starts: the reader seeks there instead of parsing the header
    /// again.
    pub records_start: noodles_bgzf::VirtualPosition,
}

/// Why the header could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("not a BAM file: decompressed data starts with {found:?}, not \"BAM\\1\"")]
    WrongMagic { found: String },
    #[error("header is truncated")]
    Truncated,
    #[error("header {what} of {size} bytes exceeds the limit of {limit} bytes (max_header_bytes)")]
    TooLarge {
        what: &'static str,
        size: i64,
        limit: usize,
    },
    #[error("header has a negative {what} ({value})")]
    Negative { what: &'static str, value: i32 },
    #[error("header text is not valid UTF-8")]
    InvalidText,
    #[error("reference {index} has an invalid name")]
    InvalidReferenceName { index: usize },
    #[error(transparent)]
    Bgzf(#[from] BgzfError),
}

impl HeaderError {
    /// Whether a configured limit (`max_header_bytes`) refused the header.
    pub fn is_limit(&self) -> bool {
        matches!(self, Self::TooLarge { .. })
    }
}

/// Reads the header from the start of the stream, leaving it at the first record.
///
/// # Errors
///
/// Returns a [`HeaderError`] when the data is not a BAM header or breaks a limit.
pub fn read_header<R: Read>(
    stream: &mut BgzfStream<R>,
    limits: HeaderLimits,
) -> Result<BamHeader, HeaderError> {
    let mut reader = HeaderReader {
        stream,
        budget: limits.max_header_bytes,
        scratch: Vec::new(),
    };

    let magic = reader.array::<4>()?;
    if magic != *b"BAM\x01" {
        let found = String::from_utf8_lossy(&magic).into_owned();
        return Err(HeaderError::WrongMagic { found });
    }

    let text_len = reader.length("text length")?;
    let raw_text = reader.bytes(text_len, "text")?.to_vec();

    let reference_count = reader.length("reference count")?;
    let mut reference_names = Vec::new();
    let mut reference_lengths = Vec::new();
    for index in 0..reference_count {
        // Each entry takes at least 9 bytes, so the budget bounds the loop as well as the data.
        let name_len = reader.length("reference name length")?;
        let name = reader.bytes(name_len, "reference name")?;
        let name = match name.split_last() {
            Some((0, name)) if !name.is_empty() && !name.contains(&0) => std::str::from_utf8(name)
                .map_err(|_| HeaderError::InvalidReferenceName { index })?
                .to_owned(),
            _ => return Err(HeaderError::InvalidReferenceName { index }),
        };
        let length = reader.length("reference length")?;
        reference_names.push(name);
        reference_lengths.push(length as u32);
    }

    let text = sam_header_text(&raw_text, &reference_names, &reference_lengths)?;
    let records_start = stream.virtual_position()?;
    Ok(BamHeader {
        text,
        reference_names: reference_names.into(),
        reference_lengths,
        records_start,
    })
}

/// The header text as `samtools view -H --no-PG` prints it.
///
/// The text ends at its first NUL (BAM writers pad it), gains a final newline if it lacks one,
/// and, when it has no `@SQ` line at all, gets one per binary reference, as htslib adds them.
fn sam_header_text(raw: &[u8], names: &[String], lengths: &[u32]) -> Result<String, HeaderError> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let mut text = std::str::from_utf8(&raw[..end])
        .map_err(|_| HeaderError::InvalidText)?
        .to_owned();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    if !text.lines().any(|line| line.starts_with("@SQ\t")) {
        for (name, length) in names.iter().zip(lengths) {
            text.push_str(&format!("@SQ\tSN:{name}\tLN:{length}\n"));
        }
    }
    Ok(text)
}

struct HeaderReader<'a, R> {
    stream: &'a mut BgzfStream<R>,
    budget: usize,
    scratch: Vec<u8>,
}

impl<R: Read> HeaderReader<'_, R> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], HeaderError> {
        let mut buf = [0; N];
        self.take_budget(N as i64, "header")?;
        self.stream
            .read_exact(&mut buf)?
            .map_err(|_| HeaderError::Truncated)?;
        Ok(buf)
    }

    fn length(&mut self, what: &'static str) -> Result<usize, HeaderError> {
        let value = i32::from_le_bytes(self.array::<4>()?);
        usize::try_from(value).map_err(|_| HeaderError::Negative { what, value })
    }

    fn bytes(&mut self, len: usize, what: &'static str) -> Result<&[u8], HeaderError> {
        self.take_budget(len as i64, what)?;
        self.scratch.clear();
        self.stream
            .read_into(&mut self.scratch, len)?
            .map_err(|_| HeaderError::Truncated)?;
        Ok(&self.scratch)
    }

    fn take_budget(&mut self, size: i64, what: &'static str) -> Result<(), HeaderError> {
        let limit = self.budget;
        self.budget = usize::try_from(size)
            .ok()
            .and_then(|size| self.budget.checked_sub(size))
            .ok_or(HeaderError::TooLarge { what, size, limit })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_text_matches_samtools() {
        let names = ["chr1".to_owned(), "chr2".to_owned()];
        let t = |raw: &[u8], expected: &str| {
            assert_eq!(sam_header_text(raw, &names, &[100, 200]).unwrap(), expected);
        };
        // Each case was checked against `samtools view -H --no-PG` (htslib 1.16).
        t(b"@SQ\tSN:chr1\tLN:100\n\0\0\0", "@SQ\tSN:chr1\tLN:100\n");
        t(
            b"@HD\tVN:1.6\n@CO\tx",
            "@HD\tVN:1.6\n@CO\tx\n@SQ\tSN:chr1\tLN:100\n@SQ\tSN:chr2\tLN:200\n",
        );
        t(b"", "@SQ\tSN:chr1\tLN:100\n@SQ\tSN:chr2\tLN:200\n");
    }
}

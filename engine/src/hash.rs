//! What a source file holds, as one short hash: how the daemon tells the same content dropped
//! twice, and a checkpoint tells an input that changed under it.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use sha2::{Digest, Sha256};

/// Bytes hashed from each end of a file, and from each of the samples between.
const EDGE_BYTES: u64 = 1 << 20;
const SAMPLE_BYTES: u64 = 64 << 10;
const SAMPLES: u64 = 16;

/// SHA-256 over the size and samples of a file: both ends (1 MiB each) and 16 slices of
/// 64 KiB between. Reading whole files twice would double the I/O of a 100 GB BAM; BGZF
/// compression makes any content change ripple through the compressed bytes and the size, so
/// the samples tell different files apart.
///
/// # Errors
///
/// Returns the I/O error of reading the file.
pub fn content_hash(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut hasher = Sha256::new();
    hasher.update(size.to_le_bytes());
    let mut buf = Vec::new();
    let mut take = |file: &mut File, offset: u64, len: u64| -> io::Result<()> {
        let len = len.min(size.saturating_sub(offset));
        file.seek(SeekFrom::Start(offset))?;
        buf.clear();
        Read::by_ref(file).take(len).read_to_end(&mut buf)?;
        hasher.update(&buf);
        Ok(())
    };
    if size <= 2 * EDGE_BYTES + SAMPLES * SAMPLE_BYTES {
        take(&mut file, 0, size)?;
    } else {
        take(&mut file, 0, EDGE_BYTES)?;
        let stride = (size - 2 * EDGE_BYTES) / (SAMPLES + 1);
        for i in 1..=SAMPLES {
            take(&mut file, EDGE_BYTES + i * stride, SAMPLE_BYTES)?;
        }
        take(&mut file, size - EDGE_BYTES, EDGE_BYTES)?;
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn content_hash_follows_content_not_name() {
        let dir = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        fs::write(dir.path().join("a"), &big).unwrap();
        fs::write(dir.path().join("b"), &big).unwrap();
        let mut changed = big.clone();
        changed[4_999_999] ^= 1;
        fs::write(dir.path().join("c"), &changed).unwrap();
        let h = |n: &str| content_hash(&dir.path().join(n)).unwrap();
        assert_eq!(h("a"), h("b"));
        assert_ne!(h("a"), h("c"));
        fs::write(dir.path().join("small"), b"x").unwrap();
        assert_eq!(h("small").len(), 64);
    }
}

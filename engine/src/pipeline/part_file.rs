//! A part file on its way to the disk: counted, checksummed, and on a local disk written with
//! direct I/O.
//!
//! Written through the page cache, every byte of a part is first copied by the kernel into
//! freshly allocated cache pages. On the 2-core VMs this project is measured on that copy was
//! the writer thread's main work and 12% of all the CPU of a long-read conversion
//! (`copy_folio_from_iter_atomic`; `dd` wrote 300 MB there at 0.43 GB/s buffered and at 2.5 GB/s
//! with `O_DIRECT`). A part is read again only by its consumers, often on other hosts, so
//! caching it on the way out also evicts what the host had cached instead.
//!
//! Direct I/O needs buffers, lengths and file offsets aligned to the device's blocks: bytes are
//! staged in an aligned 1 MiB buffer and written a full buffer at a time, and the unaligned
//! tail is written through the cache when the part ends. It is used only where the filesystem
//! is a local disk one (ext4, XFS, btrfs): on network and cluster filesystems direct writes
//! are synchronous round trips, and tmpfs has no direct I/O. A filesystem that refuses it
//! after all (`EINVAL`) gets the remaining bytes through the cache.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

/// Alignment of direct writes: a page, a multiple of any device's logical block.
const ALIGN: usize = 4096;
/// Bytes staged before a direct write.
const STAGE_BYTES: usize = 1 << 20;

/// A part file being written: counts and checksums its bytes on their way to the disk.
pub(super) struct PartFile {
    file: File,
    crc: libdeflater::Crc,
    bytes: u64,
    /// `Some` while writes go straight to the disk.
    staging: Option<Staging>,
}

/// What [`PartFile::finish`] leaves: the file with every byte written, their CRC32 and count.
pub(super) struct Finished {
    pub file: File,
    pub crc32: u32,
    pub bytes: u64,
}

impl PartFile {
    /// Creates (or truncates) the file at `path`, with direct I/O where it pays.
    pub(super) fn create(path: &Path) -> io::Result<Self> {
        if path.parent().is_some_and(is_local_disk) {
            match open_direct(path) {
                Ok(file) => return Ok(Self::new(file, Some(Staging::new()))),
                // Refused after all: through the cache, as elsewhere.
                Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(Self::new(File::create(path)?, None))
    }

    fn new(file: File, staging: Option<Staging>) -> Self {
        Self {
            file,
            crc: libdeflater::Crc::new(),
            bytes: 0,
            staging,
        }
    }

    /// The file, to start writeback of what went through the cache.
    pub(super) fn file(&self) -> &File {
        &self.file
    }

    /// Whether writes still bypass the page cache.
    #[cfg(test)]
    fn is_direct(&self) -> bool {
        self.staging.is_some()
    }

    /// Writes what is staged: the aligned part directly, the tail through the cache.
    pub(super) fn finish(mut self) -> io::Result<Finished> {
        if let Some(staging) = self.staging.take() {
            let staged = staging.staged();
            let aligned = staged.len() / ALIGN * ALIGN;
            if write_direct(&mut self.file, &staged[..aligned])? {
                stop_direct(&self.file)?;
            }
            self.file.write_all(&staged[aligned..])?;
        }
        Ok(Finished {
            file: self.file,
            crc32: self.crc.sum(),
            bytes: self.bytes,
        })
    }
}

impl Write for PartFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match &mut self.staging {
            None => self.file.write(buf)?,
            Some(staging) => {
                let n = staging.push(buf);
                if staging.is_full() {
                    let still_direct = write_direct(&mut self.file, staging.staged())?;
                    staging.clear();
                    if !still_direct {
                        self.staging = None;
                    }
                }
                n
            }
        };
        self.crc.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    /// Staged bytes stay staged: they can only be written directly a full block at a time,
    /// and nothing is durable before the part's fsync anyway.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An aligned buffer of [`STAGE_BYTES`].
struct Staging {
    buffer: Vec<u8>,
    /// Where the aligned region starts in `buffer`.
    start: usize,
    len: usize,
}

impl Staging {
    fn new() -> Self {
        let buffer = vec![0; STAGE_BYTES + ALIGN];
        let start = buffer.as_ptr().align_offset(ALIGN).min(ALIGN);
        Self {
            buffer,
            start,
            len: 0,
        }
    }

    /// Copies as much of `bytes` as fits; returns how much.
    fn push(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(STAGE_BYTES - self.len);
        let at = self.start + self.len;
        self.buffer[at..at + n].copy_from_slice(&bytes[..n]);
        self.len += n;
        n
    }

    fn is_full(&self) -> bool {
        self.len == STAGE_BYTES
    }

    fn staged(&self) -> &[u8] {
        &self.buffer[self.start..self.start + self.len]
    }

    fn clear(&mut self) {
        self.len = 0;
    }
}

/// Writes all of `data` to a file opened for direct I/O; returns whether it still is. A
/// refused or partial direct write turns direct I/O off, and the rest goes through the cache.
fn write_direct(file: &mut File, mut data: &[u8]) -> io::Result<bool> {
    let mut direct = true;
    while !data.is_empty() {
        match file.write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                data = &data[n..];
                if direct && n % ALIGN != 0 {
                    stop_direct(file)?;
                    direct = false;
                }
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) if direct && error.raw_os_error() == Some(libc::EINVAL) => {
                tracing::debug!(%error, "Direct write refused; writing through the page cache.");
                stop_direct(file)?;
                direct = false;
            }
            Err(error) => return Err(error),
        }
    }
    Ok(direct)
}

#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_path: &Path) -> io::Result<File> {
    Err(io::Error::from_raw_os_error(libc::EINVAL))
}

/// Clears `O_DIRECT` on the open file.
fn stop_direct(file: &File) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        // SAFETY: fcntl with F_GETFL/F_SETFL reads and sets the descriptor's flags only; the
        // descriptor is open for the borrow's lifetime.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
    Ok(())
}

/// Whether `dir` is on a filesystem of local disks, where direct I/O pays.
fn is_local_disk(dir: &Path) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: an all-zero statfs is a valid value of this plain C struct.
        let mut info: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: statfs fills the struct we own; `path` is a valid C string that outlives
        // the call.
        if unsafe { libc::statfs(path.as_ptr(), &mut info) } != 0 {
            return false;
        }
        // The magic numbers' type and `f_type`'s differ between targets.
        #[allow(clippy::unnecessary_cast)]
        let local = [
            libc::EXT4_SUPER_MAGIC,
            libc::XFS_SUPER_MAGIC,
            libc::BTRFS_SUPER_MAGIC,
        ]
        .iter()
        .any(|&magic| magic as i64 == info.f_type as i64);
        local
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes of a part written in uneven pieces, as parquet's writer does.
    fn write_in_pieces(part: &mut PartFile, data: &[u8]) {
        let mut rest = data;
        let mut piece = 1;
        while !rest.is_empty() {
            let n = piece.min(rest.len());
            part.write_all(&rest[..n]).unwrap();
            rest = &rest[n..];
            piece = piece * 7 % 300_007 + 13;
        }
    }

    fn check(dir: &Path, expect_direct: bool) {
        let path = dir.join("part.parquet.partial");
        let data: Vec<u8> = (0..3 * STAGE_BYTES + 5_555)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let mut part = PartFile::create(&path).unwrap();
        assert_eq!(part.is_direct(), expect_direct, "{}", dir.display());
        write_in_pieces(&mut part, &data);
        let finished = part.finish().unwrap();
        finished.file.sync_all().unwrap();
        assert_eq!(finished.bytes, data.len() as u64);
        let mut crc = libdeflater::Crc::new();
        crc.update(&data);
        assert_eq!(finished.crc32, crc.sum());
        assert!(std::fs::read(&path).unwrap() == data);
    }

    #[test]
    fn a_part_on_a_local_disk_is_written_directly_and_whole() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        check(dir.path(), is_local_disk(dir.path()));
    }

    #[test]
    fn a_part_elsewhere_goes_through_the_page_cache() {
        // tmpfs has no direct I/O.
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() || is_local_disk(shm) {
            return;
        }
        let dir = tempfile::tempdir_in(shm).unwrap();
        check(dir.path(), false);
    }

    #[test]
    fn a_refused_direct_write_goes_on_through_the_page_cache() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        if !is_local_disk(dir.path()) {
            return;
        }
        let path = dir.path().join("refused");
        let mut file = open_direct(&path).unwrap();
        // Misaligned in memory and in length: the kernel refuses it with EINVAL.
        let data: Vec<u8> = (0..10_001u32).map(|i| (i % 253) as u8).collect();
        assert!(!write_direct(&mut file, &data[1..]).unwrap());
        file.write_all(b"more").unwrap();
        drop(file);
        let written = std::fs::read(&path).unwrap();
        assert_eq!(&written[..10_000], &data[1..]);
        assert_eq!(&written[10_000..], b"more");
    }

    #[test]
    fn a_part_smaller_than_a_block_is_written_whole() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let path = dir.path().join("small");
        let mut part = PartFile::create(&path).unwrap();
        part.write_all(b"PAR1").unwrap();
        let finished = part.finish().unwrap();
        assert_eq!(finished.bytes, 4);
        assert_eq!(std::fs::read(&path).unwrap(), b"PAR1");
    }
}

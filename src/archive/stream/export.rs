//! `podckpt export`: a committed checkpoint as one stream.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use tracing::debug;

use super::{Recipients, StreamError};
use crate::archive::{MANIFEST, Manifest, digest::Listed, is_committed};

/// Reads from files and writes into zstd a MiB at a time.
const COPY_BUFFER: usize = 1 << 20;

pub struct ExportOptions {
    /// zstd's level (1 to 19).
    pub level: i32,
    /// zstd's worker threads; 0 compresses on the calling thread.
    pub threads: u32,
    /// Encrypt to these; none writes the stream in the clear.
    pub recipients: Recipients,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            level: super::DEFAULT_LEVEL,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            recipients: Recipients::default(),
        }
    }
}

#[derive(Debug)]
pub struct Exported {
    pub files: usize,
    /// The checkpoint's bytes, manifest included.
    pub bytes_in: u64,
    /// The stream's bytes.
    pub bytes_out: u64,
}

/// Writes the committed checkpoint in `dir` to `output`.
///
/// The files must be exactly those the manifest lists, with its sizes; their
/// bytes are not hashed here, since every byte is hashed on import anyway
/// and hashing twice would put the export behind plain `tar | zstd`.
pub fn export<W: Write>(dir: &Path, output: W, options: &ExportOptions) -> Result<Exported, StreamError> {
    if !is_committed(dir) {
        return Err(StreamError::Source(format!(
            "{} holds no whole checkpoint (no {MANIFEST})",
            dir.display()
        )));
    }
    let manifest_path = dir.join(MANIFEST);
    let manifest_bytes = std::fs::read(&manifest_path).map_err(StreamError::io(manifest_path.display().to_string()))?;
    let manifest: Manifest =
        serde_json::from_slice(&manifest_bytes).map_err(|source| crate::archive::ArchiveError::Json {
            path: manifest_path.clone(),
            source,
        })?;
    manifest.check_untrusted()?;
    let listed = manifest.listing(dir)?;

    let mut counted = Counted {
        inner: output,
        bytes: 0,
    };
    if options.recipients.is_empty() {
        write_tar(&mut counted, &manifest_bytes, &listed, options)?;
    } else {
        let mut encrypted = options.recipients.encrypt(&mut counted)?;
        write_tar(&mut encrypted, &manifest_bytes, &listed, options)?;
        encrypted.finish().map_err(StreamError::io("ending the encryption"))?;
    }
    counted.flush().map_err(StreamError::io("writing the stream"))?;
    let exported = Exported {
        files: listed.len() + 1,
        bytes_in: manifest_bytes.len() as u64 + manifest.total_size(),
        bytes_out: counted.bytes,
    };
    debug!(dir = %dir.display(), files = exported.files, bytes_in = exported.bytes_in, bytes_out = exported.bytes_out, "exported");
    Ok(exported)
}

fn write_tar<W: Write>(
    output: W,
    manifest: &[u8],
    listed: &[Listed],
    options: &ExportOptions,
) -> Result<(), StreamError> {
    let mut zstd = zstd::Encoder::new(output, options.level).map_err(StreamError::io("starting zstd"))?;
    zstd.include_checksum(true)
        .map_err(StreamError::io("configuring zstd"))?;
    if options.threads > 0 {
        zstd.multithread(options.threads)
            .map_err(StreamError::io("starting zstd's threads"))?;
    }
    // tar copies through an 8 KiB buffer; zstd takes a MiB at a time.
    let mut tar = tar::Builder::new(BufWriter::with_capacity(COPY_BUFFER, zstd));
    append(&mut tar, MANIFEST, manifest.len() as u64, manifest)?;
    for file in listed {
        let handle = open_listed(file)?;
        let exactly = Exactly {
            inner: BufReader::with_capacity(COPY_BUFFER, handle),
            left: file.size,
            name: &file.name,
        };
        append(&mut tar, &file.name, file.size, exactly)?;
    }
    let zstd = tar
        .into_inner()
        .map_err(StreamError::io("ending the tar stream"))?
        .into_inner()
        .map_err(|e| StreamError::Io {
            context: "writing the stream".into(),
            source: e.into_error(),
        })?;
    zstd.finish().map_err(StreamError::io("ending the zstd stream"))?;
    Ok(())
}

/// A listed file, if it is still the regular file of the listed size: a
/// link put in its place since the listing is not followed out of the
/// checkpoint.
fn open_listed(file: &Listed) -> Result<std::fs::File, StreamError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = file.path.display().to_string();
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&file.path)
        .map_err(StreamError::io(path.clone()))?;
    let meta = handle.metadata().map_err(StreamError::io(path))?;
    if !meta.is_file() || meta.len() != file.size {
        return Err(StreamError::Source(format!(
            "{} changed since it was listed",
            file.name
        )));
    }
    Ok(handle)
}

fn append<W: Write>(tar: &mut tar::Builder<W>, name: &str, size: u64, data: impl Read) -> Result<(), StreamError> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(crate::archive::FILE_MODE);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    tar.append_data(&mut header, name, data)
        .map_err(StreamError::io(format!("exporting {name}")))
}

/// A file's first `left` bytes, never more, and an error if it holds fewer:
/// tar writes the size in the header first, so a file that grew or shrank
/// would corrupt the stream instead of failing it.
struct Exactly<'a, R> {
    inner: R,
    left: u64,
    name: &'a str,
}

impl<R: Read> Read for Exactly<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{} shrank while it was exported", self.name),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

struct Counted<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

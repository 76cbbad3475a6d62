//! `podckpt import`: a stream from `export` unpacked into an empty
//! directory, every byte checked against the manifest on its way to disk.
//!
//! Two threads share the work: this one decrypts, decompresses and reads
//! the tar stream; a writer hashes each block and writes it. The manifest
//! gives the SHA-256 of every 16 MiB chunk, so a changed byte is refused at
//! the end of its chunk, with no second pass over what was written and no
//! copy of the whole stream anywhere.
//!
//! The tar stream is read raw: the tar crate would otherwise read a GNU
//! long name or a pax header whole into memory, whatever size it claims,
//! before any check of ours could see it. Export writes GNU long names only,
//! and those are read here, bounded.

use std::collections::BTreeSet;
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use super::destination::Destination;
use super::{Identities, MANIFEST_LIMIT, StreamError, TRAILER_LIMIT, crypt};
use crate::archive::{FILE_MODE, FileEntry, MANIFEST, Manifest, Seals};

/// The blocks handed from the reader to the writer.
const BLOCK: usize = 1 << 20;
/// Blocks in flight between the two: enough to ride out a slow write.
const IN_FLIGHT: usize = 8;
/// A GNU long name: a path Linux can hold, and its NUL.
const LONG_NAME_LIMIT: u64 = 4096;

pub struct ImportOptions<'a> {
    /// Open an encrypted stream with these; a plain stream is then refused.
    pub identities: Option<&'a Identities>,
    /// podckptd's seals: record the result as verified, so that the first
    /// RestorePod does not hash it again.
    pub seals: Option<&'a Seals>,
}

#[derive(Debug)]
pub struct Imported {
    /// The checkpoint's canonical path, the one its seal is found by.
    pub dir: PathBuf,
    pub files: usize,
    /// The checkpoint's bytes, manifest included.
    pub bytes: u64,
    pub sealed: bool,
}

/// Unpacks the stream `input` into `dir`, which must be empty or absent
/// (it is then created, 0700). On a refusal `dir` is left as it was found.
pub fn import<R: Read>(input: R, dir: &Path, options: &ImportOptions<'_>) -> Result<Imported, StreamError> {
    // A wrong key, or a stream that is not an export, is refused before
    // anything is made.
    let plain = crypt::plaintext(BufReader::with_capacity(BLOCK, input), options.identities)?;
    let zstd = zstd::Decoder::new(compressed(plain)?).map_err(StreamError::io("starting zstd"))?;
    let destination = Destination::prepare(dir)?;
    let mut archive = tar::Archive::new(zstd);
    let (manifest_bytes, manifest) = unpack(&mut archive, &destination.dir)?;
    check_trailer(archive.into_inner())?;
    let dir = destination.commit(&manifest_bytes)?;

    let sealed = options.seals.is_some_and(|seals| seal(seals, &dir, &manifest_bytes));
    let imported = Imported {
        files: manifest.files.len() + 1,
        bytes: (manifest_bytes.len() as u64).saturating_add(manifest.total_size()),
        sealed,
        dir,
    };
    debug!(dir = %imported.dir.display(), files = imported.files, bytes = imported.bytes, sealed, "imported");
    Ok(imported)
}

/// `plain`, once its first bytes show a zstd frame.
fn compressed<R: Read>(mut plain: R) -> Result<impl Read, StreamError> {
    const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    let mut magic = [0u8; 4];
    plain
        .read_exact(&mut magic)
        .map_err(StreamError::reading("the stream's first bytes"))?;
    if magic != ZSTD_MAGIC {
        return Err(StreamError::refused(
            "(the stream)",
            "is not a podckpt export: neither an age nor a zstd stream",
        ));
    }
    Ok(std::io::Cursor::new(magic).chain(plain))
}

/// Reads the manifest, then every file, handing the files' blocks to the
/// writer. Returns the manifest as it came, and parsed.
fn unpack<R: Read>(archive: &mut tar::Archive<R>, dir: &Path) -> Result<(Vec<u8>, Manifest), StreamError> {
    let mut entries = Entries {
        inner: archive
            .entries()
            .map_err(StreamError::reading("reading the tar stream"))?
            .raw(true),
    };
    let (manifest_bytes, manifest) = match entries.next()? {
        None => return Err(StreamError::Truncated("no manifest".into())),
        Some((name, entry)) => read_manifest(name, entry)?,
    };
    check_space(dir, &manifest)?;

    let (work, inbox) = sync_channel::<Work<'_>>(IN_FLIGHT);
    let (spare, spares) = sync_channel::<Vec<u8>>(IN_FLIGHT + 2);
    let chunk_size = manifest.chunk_size;
    // Scoped: the writer is joined on every way out, a panic included, so
    // nothing is written after the destination is cleaned up.
    let (read, written) = std::thread::scope(|scope| {
        let writer = scope.spawn(move || write_files(inbox, spare, chunk_size));
        let read = read_files(&mut entries, dir, &manifest, &work, &spares);
        drop(work);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(StreamError::Handover("the writer thread panicked".into())));
        (read, written)
    });
    // The writer's error explains a failed hand-over better than the
    // hand-over itself; otherwise the reader's comes first.
    match (read, written) {
        (Err(StreamError::Handover(_)), Err(e)) | (Ok(()), Err(e)) => Err(e),
        (Err(e), _) => Err(e),
        (Ok(()), Ok(())) => Ok((manifest_bytes, manifest)),
    }
}

/// The tar stream's entries, with GNU long names applied: each entry comes
/// with its full name.
struct Entries<'a, R: Read> {
    inner: tar::Entries<'a, R>,
}

impl<'a, R: Read> Entries<'a, R> {
    fn next(&mut self) -> Result<Option<(String, tar::Entry<'a, R>)>, StreamError> {
        let mut long_name: Option<Vec<u8>> = None;
        loop {
            let Some(entry) = self.inner.next() else {
                return match long_name {
                    Some(_) => Err(StreamError::Truncated("a long name names no entry".into())),
                    None => Ok(None),
                };
            };
            let mut entry = entry.map_err(StreamError::reading("reading the tar stream"))?;
            if entry.header().entry_type().is_gnu_longname() {
                if long_name.is_some() || entry.size() > LONG_NAME_LIMIT {
                    return Err(StreamError::refused("(a GNU long name)", "is not a name export writes"));
                }
                let mut bytes = Vec::with_capacity(entry.size() as usize);
                entry
                    .read_to_end(&mut bytes)
                    .map_err(StreamError::reading("a long name"))?;
                while bytes.last() == Some(&0) {
                    bytes.pop();
                }
                long_name = Some(bytes);
                continue;
            }
            let bytes = long_name.take().unwrap_or_else(|| entry.path_bytes().into_owned());
            let name = String::from_utf8(bytes).map_err(|e| {
                StreamError::refused(
                    String::from_utf8_lossy(e.as_bytes()),
                    "is not UTF-8, as every name in a checkpoint is",
                )
            })?;
            return Ok(Some((name, entry)));
        }
    }
}

fn read_manifest<R: Read>(name: String, mut entry: tar::Entry<'_, R>) -> Result<(Vec<u8>, Manifest), StreamError> {
    check_kind(&entry, &name)?;
    if name != MANIFEST {
        return Err(StreamError::refused(
            name,
            format!("the stream must begin with {MANIFEST}; this is not a podckpt export"),
        ));
    }
    if entry.size() > MANIFEST_LIMIT {
        return Err(StreamError::refused(
            name,
            format!("{} bytes is far larger than any manifest", entry.size()),
        ));
    }
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry.read_to_end(&mut bytes).map_err(StreamError::reading(MANIFEST))?;
    if bytes.len() as u64 != entry.size() {
        return Err(StreamError::Truncated(format!("{MANIFEST} is cut short")));
    }
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| StreamError::refused(MANIFEST, format!("not a manifest: {e}")))?;
    manifest
        .check_untrusted()
        .map_err(|e| StreamError::refused(MANIFEST, e.to_string()))?;
    Ok((bytes, manifest))
}

/// Room for the manifest's bytes and files, before anything is written.
fn check_space(dir: &Path, manifest: &Manifest) -> Result<(), StreamError> {
    let available = crate::archive::space::available(dir).map_err(StreamError::io(dir.display().to_string()))?;
    let free = available.bytes;
    let needed = manifest.total_size();
    if free < needed {
        return Err(StreamError::Destination(format!(
            "{} has {} MiB free; the checkpoint needs {} MiB",
            dir.display(),
            free >> 20,
            needed.div_ceil(1 << 20)
        )));
    }
    // A file system that counts inodes (not all do) must have one per file.
    if let Some(inodes) = available.inodes
        && inodes < manifest.files.len() as u64
    {
        return Err(StreamError::Destination(format!(
            "{} has {inodes} inodes free; the checkpoint has {} files",
            dir.display(),
            manifest.files.len()
        )));
    }
    Ok(())
}

/// What the reader hands the writer.
enum Work<'m> {
    Open {
        name: &'m str,
        path: PathBuf,
        entry: &'m FileEntry,
    },
    /// A block, and how many of its bytes are data.
    Data(Vec<u8>, usize),
    Close,
}

fn read_files<'m, R: Read>(
    entries: &mut Entries<'_, R>,
    dir: &Path,
    manifest: &'m Manifest,
    work: &SyncSender<Work<'m>>,
    spares: &Receiver<Vec<u8>>,
) -> Result<(), StreamError> {
    let handed_over = |_| StreamError::Handover("the writer stopped".into());
    let mut seen = BTreeSet::new();
    while let Some((name, mut entry)) = entries.next()? {
        check_kind(&entry, &name)?;
        let Some((listed_name, listed)) = manifest.files.get_key_value(&name) else {
            return Err(StreamError::refused(name, "is not in the manifest"));
        };
        if !seen.insert(listed_name.as_str()) {
            return Err(StreamError::refused(name, "comes twice in the stream"));
        }
        if entry.size() != listed.size {
            return Err(StreamError::refused(
                name,
                format!(
                    "is {} bytes in the stream, {} in the manifest",
                    entry.size(),
                    listed.size
                ),
            ));
        }
        // The names are the manifest's, checked to stay inside; the
        // directories are ours, made here, 0700.
        let path = dir.join(listed_name);
        if let Some(parent) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(crate::archive::DIR_MODE)
                .create(parent)
                .map_err(StreamError::io(parent.display().to_string()))?;
        }
        work.send(Work::Open {
            name: listed_name,
            path,
            entry: listed,
        })
        .map_err(handed_over)?;
        let mut left = listed.size;
        while left > 0 {
            let mut block = spares.try_recv().unwrap_or_else(|_| vec![0; BLOCK]);
            let want = BLOCK.min(left as usize);
            let mut filled = 0;
            while filled < want {
                let n = entry
                    .read(&mut block[filled..want])
                    .map_err(StreamError::reading(name.clone()))?;
                if n == 0 {
                    return Err(StreamError::Truncated(format!(
                        "{name} stops after {} of its {} bytes",
                        listed.size - left + filled as u64,
                        listed.size
                    )));
                }
                filled += n;
            }
            left -= filled as u64;
            work.send(Work::Data(block, filled)).map_err(handed_over)?;
        }
        work.send(Work::Close).map_err(handed_over)?;
    }
    let missing: Vec<&String> = manifest.files.keys().filter(|n| !seen.contains(n.as_str())).collect();
    if let Some(first) = missing.first() {
        return Err(StreamError::Truncated(match missing.len() {
            1 => format!("{first}, listed in the manifest, never came"),
            n => format!("{first} and {} more files listed in the manifest never came", n - 1),
        }));
    }
    Ok(())
}

/// Only regular files, at names that stay inside the directory.
fn check_kind<R: Read>(entry: &tar::Entry<'_, R>, name: &str) -> Result<(), StreamError> {
    use tar::EntryType as T;
    let kind = match entry.header().entry_type() {
        T::Regular => None,
        T::Symlink => Some("a symbolic link"),
        T::Link => Some("a hard link"),
        T::Char | T::Block => Some("a device node"),
        T::Fifo => Some("a FIFO"),
        T::Directory => Some("a directory entry"),
        other => Some(match other.as_byte() {
            b'x' | b'g' => "a pax header, which export never writes",
            b'K' => "a GNU long link name, which export never writes",
            b'S' => "a sparse file",
            _ => "an entry of an unknown kind",
        }),
    };
    if let Some(kind) = kind {
        return Err(StreamError::refused(
            name,
            format!("is {kind}; a checkpoint holds regular files only"),
        ));
    }
    // The manifest lookup is what keeps names inside; this only says why.
    if name.starts_with('/') || name.split('/').any(|part| part == "..") {
        return Err(StreamError::refused(name, "leaves the directory"));
    }
    Ok(())
}

/// The writer: each block hashed into its chunk's digest, compared at the
/// end of each chunk, and written.
fn write_files(inbox: Receiver<Work<'_>>, spare: SyncSender<Vec<u8>>, chunk_size: u64) -> Result<(), StreamError> {
    let mut open: Option<Writing<'_>> = None;
    for work in inbox {
        match work {
            Work::Open { name, path, entry } => {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(FILE_MODE)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(StreamError::io(path.display().to_string()))?;
                open = Some(Writing {
                    name,
                    file,
                    entry,
                    hasher: Sha256::new(),
                    chunk: 0,
                    in_chunk: 0,
                    chunk_size,
                });
            }
            Work::Data(block, filled) => {
                let writing = open.as_mut().expect("a file is open");
                writing.take(&block[..filled])?;
                let _ = spare.try_send(block);
            }
            Work::Close => open.take().expect("a file is open").close()?,
        }
    }
    Ok(())
}

struct Writing<'m> {
    name: &'m str,
    file: std::fs::File,
    entry: &'m FileEntry,
    hasher: Sha256,
    chunk: usize,
    in_chunk: u64,
    chunk_size: u64,
}

impl Writing<'_> {
    fn take(&mut self, mut data: &[u8]) -> Result<(), StreamError> {
        self.file.write_all(data).map_err(StreamError::io(self.name))?;
        while !data.is_empty() {
            let room = (self.chunk_size - self.in_chunk).min(data.len() as u64) as usize;
            self.hasher.update(&data[..room]);
            self.in_chunk += room as u64;
            data = &data[room..];
            if self.in_chunk == self.chunk_size {
                self.end_chunk()?;
            }
        }
        Ok(())
    }

    fn end_chunk(&mut self) -> Result<(), StreamError> {
        let actual = format!("{:x}", std::mem::take(&mut self.hasher).finalize());
        if self.entry.sha256.get(self.chunk) != Some(&actual) {
            let start = self.chunk as u64 * self.chunk_size;
            return Err(StreamError::refused(
                self.name,
                format!(
                    "bytes {start}..{} do not match their SHA-256 in the manifest",
                    start + self.in_chunk
                ),
            ));
        }
        self.chunk += 1;
        self.in_chunk = 0;
        Ok(())
    }

    fn close(mut self) -> Result<(), StreamError> {
        // The last chunk is short, or the file is empty: its digest is of
        // what there is.
        if self.in_chunk > 0 || self.chunk == 0 {
            self.end_chunk()?;
        }
        Ok(())
    }
}

/// What follows the tar stream's last entry: zero blocks up to a record,
/// then the clean end of the zstd (and age) stream, or a refusal.
fn check_trailer<R: Read>(rest: R) -> Result<(), StreamError> {
    let mut trailer = Vec::new();
    rest.take(TRAILER_LIMIT + 1)
        .read_to_end(&mut trailer)
        .map_err(StreamError::reading("after the last file"))?;
    if trailer.len() as u64 > TRAILER_LIMIT || trailer.iter().any(|&b| b != 0) {
        return Err(StreamError::refused(
            "(after the last file)",
            "the stream carries data that is not part of the checkpoint",
        ));
    }
    Ok(())
}

fn seal(seals: &Seals, dir: &Path, manifest: &[u8]) -> bool {
    let sealed = seals
        .snapshot(dir)
        .and_then(|snapshot| snapshot.map(|s| seals.seal(s, manifest)).transpose());
    match sealed {
        Ok(sealed) => sealed.is_some(),
        Err(error) => {
            warn!(path = %dir.display(), %error, "imported, but not sealed: the first restore will hash it");
            false
        }
    }
}

//! `podckpt import`: a stream from `export` unpacked into an empty
//! directory, every byte checked against the manifest on its way to disk.
//!
//! Two threads share the work: this one decrypts, decompresses and reads
//! the tar stream; a writer hashes each block and writes it. The manifest
//! gives the SHA-256 of every 16 MiB chunk, so a changed byte is refused at
//! the end of its chunk, with no second pass over what was written and no
//! copy of the whole stream anywhere.

use std::collections::BTreeSet;
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use super::{Identities, MANIFEST_LIMIT, StreamError, TRAILER_LIMIT, crypt};
use crate::archive::{Building, FILE_MODE, FileEntry, MANIFEST, Manifest, Seals, durable};

/// The blocks handed from the reader to the writer.
const BLOCK: usize = 1 << 20;
/// Blocks in flight between the two: enough to ride out a slow write.
const IN_FLIGHT: usize = 8;

pub struct ImportOptions<'a> {
    /// Open an encrypted stream with these; a plain stream is then refused.
    pub identities: Option<&'a Identities>,
    /// podckptd's seals: record the result as verified, so that the first
    /// RestorePod does not hash it again.
    pub seals: Option<&'a Seals>,
}

#[derive(Debug)]
pub struct Imported {
    pub files: usize,
    /// The checkpoint's bytes, manifest included.
    pub bytes: u64,
    pub sealed: bool,
}

/// Unpacks the stream `input` into `dir`, which must be empty or absent
/// (it is then created, 0700). On any error `dir` is left as it was found.
pub fn import<R: Read>(input: R, dir: &Path, options: &ImportOptions<'_>) -> Result<Imported, StreamError> {
    // A wrong key, or a stream that is not an export, is refused before
    // anything is made.
    let plain = crypt::plaintext(BufReader::with_capacity(BLOCK, input), options.identities)?;
    let zstd = zstd::Decoder::new(compressed(plain)?).map_err(StreamError::io("starting zstd"))?;
    let mut target = Target::prepare(dir)?;
    let mut archive = tar::Archive::new(zstd);
    let (manifest_bytes, manifest) = unpack(&mut archive, dir)?;
    check_trailer(archive.into_inner())?;

    durable::sync_tree(dir)?;
    if target.created {
        // The directory's own name, in its parent, must survive a power cut too.
        let parent = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        durable::sync_dir(parent)?;
    }
    target
        .building
        .take()
        .expect("building until committed")
        .commit(&manifest_bytes, true)?;
    target.committed = true;
    let sealed = options.seals.is_some_and(|seals| seal(seals, dir, &manifest_bytes));
    let imported = Imported {
        files: manifest.files.len() + 1,
        bytes: manifest_bytes.len() as u64 + manifest.total_size(),
        sealed,
    };
    debug!(dir = %dir.display(), files = imported.files, bytes = imported.bytes, sealed, "imported");
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

/// The destination while the import is under way: emptied again, or
/// removed if the import made it, unless the import commits.
struct Target {
    dir: PathBuf,
    building: Option<Building>,
    created: bool,
    committed: bool,
}

impl Target {
    fn prepare(dir: &Path) -> Result<Self, StreamError> {
        let created = match std::fs::symlink_metadata(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                crate::archive::create_private_dir(dir)?;
                true
            }
            Err(e) => return Err(StreamError::io(dir.display().to_string())(e)),
            Ok(meta) if !meta.is_dir() => {
                return Err(StreamError::Destination(format!(
                    "{} is not a directory",
                    dir.display()
                )));
            }
            Ok(_) => {
                let mut entries = std::fs::read_dir(dir).map_err(StreamError::io(dir.display().to_string()))?;
                if entries.next().is_some() {
                    return Err(StreamError::Destination(format!(
                        "{} is not empty: a checkpoint is imported into an empty directory",
                        dir.display()
                    )));
                }
                false
            }
        };
        Ok(Self {
            dir: dir.to_owned(),
            building: Some(Building::begin(dir)),
            created,
            committed: false,
        })
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // Building's own drop empties the directory.
        drop(self.building.take());
        if self.created
            && !self.committed
            && let Err(error) = std::fs::remove_dir(&self.dir)
        {
            warn!(path = %self.dir.display(), %error, "could not remove an unfinished import");
        }
    }
}

/// Reads the manifest, then every file, handing the files' blocks to the
/// writer. Returns the manifest as it came, and parsed.
fn unpack<R: Read>(archive: &mut tar::Archive<R>, dir: &Path) -> Result<(Vec<u8>, Manifest), StreamError> {
    let mut entries = archive
        .entries()
        .map_err(StreamError::reading("reading the tar stream"))?;
    let (manifest_bytes, manifest) = match entries.next() {
        None => return Err(StreamError::Truncated("no manifest".into())),
        Some(entry) => read_manifest(entry.map_err(StreamError::reading("reading the manifest"))?)?,
    };
    check_space(dir, manifest.total_size())?;

    let (work, inbox) = sync_channel::<Work>(IN_FLIGHT);
    let (spare, spares) = sync_channel::<Vec<u8>>(IN_FLIGHT + 2);
    let chunk_size = manifest.chunk_size;
    let writer = std::thread::Builder::new()
        .name("import-writer".into())
        .spawn(move || write_files(inbox, spare, chunk_size))
        .map_err(StreamError::io("starting the writer"))?;
    let read = read_files(&mut entries, dir, &manifest, &work, &spares);
    drop(work);
    let written = writer
        .join()
        .unwrap_or_else(|_| Err(StreamError::Destination("the writer thread panicked".into())));
    // The writer's error explains a failed hand-over better than the
    // hand-over itself; otherwise the reader's comes first.
    match (read, written) {
        (Err(StreamError::Destination(_)), Err(e)) | (Ok(()), Err(e)) => Err(e),
        (Err(e), _) => Err(e),
        (Ok(()), Ok(())) => Ok((manifest_bytes, manifest)),
    }
}

fn read_manifest<R: Read>(mut entry: tar::Entry<'_, R>) -> Result<(Vec<u8>, Manifest), StreamError> {
    let name = entry_name(&entry);
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

fn check_space(dir: &Path, needed: u64) -> Result<(), StreamError> {
    let stat = nix::sys::statvfs::statvfs(dir).map_err(|e| StreamError::io(dir.display().to_string())(e.into()))?;
    let free = stat.blocks_available() as u64 * stat.fragment_size() as u64;
    if free < needed {
        return Err(StreamError::Destination(format!(
            "{} has {} MiB free; the checkpoint needs {} MiB",
            dir.display(),
            free >> 20,
            needed.div_ceil(1 << 20)
        )));
    }
    Ok(())
}

/// What the reader hands the writer.
enum Work {
    Open {
        name: String,
        path: PathBuf,
        entry: FileEntry,
    },
    /// A block, and how many of its bytes are data.
    Data(Vec<u8>, usize),
    Close,
}

fn read_files<R: Read>(
    entries: &mut tar::Entries<'_, R>,
    dir: &Path,
    manifest: &Manifest,
    work: &SyncSender<Work>,
    spares: &Receiver<Vec<u8>>,
) -> Result<(), StreamError> {
    let handed_over = |_| StreamError::Destination("the writer stopped".into());
    let mut seen = BTreeSet::new();
    for entry in entries {
        let mut entry = entry.map_err(StreamError::reading("reading the tar stream"))?;
        let name = entry_name(&entry);
        check_kind(&entry, &name)?;
        let Some(listed) = manifest.files.get(&name) else {
            return Err(not_listed(name));
        };
        if !seen.insert(name.clone()) {
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
        let path = dir.join(&name);
        if let Some(parent) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(crate::archive::DIR_MODE)
                .create(parent)
                .map_err(StreamError::io(parent.display().to_string()))?;
        }
        work.send(Work::Open {
            name: name.clone(),
            path,
            entry: listed.clone(),
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
    if let Some(missing) = manifest.files.keys().find(|name| !seen.contains(*name)) {
        return Err(StreamError::Truncated(format!(
            "{missing} and {} other files of the manifest never came",
            manifest.files.len() - seen.len() - 1
        )));
    }
    Ok(())
}

fn entry_name<R: Read>(entry: &tar::Entry<'_, R>) -> String {
    String::from_utf8_lossy(&entry.path_bytes()).into_owned()
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
            b'x' | b'g' => "a pax header of a kind export never writes",
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
    if name.starts_with('/') || name.split('/').any(|part| part == "..") {
        return Err(StreamError::refused(name, "leaves the directory"));
    }
    Ok(())
}

fn not_listed(name: String) -> StreamError {
    StreamError::refused(name, "is not in the manifest")
}

/// The writer: each block hashed into its chunk's digest, compared at the
/// end of each chunk, and written.
fn write_files(inbox: Receiver<Work>, spare: SyncSender<Vec<u8>>, chunk_size: u64) -> Result<(), StreamError> {
    let mut open: Option<Writing> = None;
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
                    file: std::io::BufWriter::with_capacity(BLOCK, file),
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

struct Writing {
    name: String,
    file: std::io::BufWriter<std::fs::File>,
    entry: FileEntry,
    hasher: Sha256,
    chunk: usize,
    in_chunk: u64,
    chunk_size: u64,
}

impl Writing {
    fn take(&mut self, mut data: &[u8]) -> Result<(), StreamError> {
        self.file.write_all(data).map_err(StreamError::io(self.name.clone()))?;
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
            return Err(StreamError::refused(
                self.name.clone(),
                format!(
                    "bytes {}..{} do not match their SHA-256 in the manifest",
                    self.chunk as u64 * self.chunk_size,
                    self.chunk as u64 * self.chunk_size + self.in_chunk
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
        self.file.flush().map_err(StreamError::io(self.name.clone()))
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

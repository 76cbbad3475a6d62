//! SHA-256 over the files of a tree, in fixed-size chunks hashed on every
//! core. One SHA-256 cannot be split across threads, and a checkpoint is
//! mostly one large page image: with a digest per file, hashing it would
//! keep one core busy while the other idles and the caller waits.
//!
//! Each chunk's digest is the plain SHA-256 of that byte range, so a person
//! can check one by hand with `dd` and `sha256sum`.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use sha2::{Digest, Sha256};

use super::ArchiveError;

/// The chunk size new manifests use.
pub const CHUNK_SIZE: u64 = 16 << 20;

/// The chunk sizes a manifest may declare: small enough to spread a page
/// image over the cores, large enough that the manifest stays small.
pub const CHUNK_SIZES: std::ops::RangeInclusive<u64> = (1 << 20)..=(1 << 30);

const READ_BUFFER: usize = 1 << 20;

/// A regular file under a root.
#[derive(Clone, Debug)]
pub struct Listed {
    /// The path relative to the root, `/`-separated.
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
}

/// Every regular file under `root`, sorted by name. Anything that is neither
/// a regular file nor a directory is refused: a checkpoint holds no links,
/// devices or sockets.
pub fn list(root: &Path) -> Result<Vec<Listed>, ArchiveError> {
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(root).follow_links(false).sort_by_file_name() {
        let entry = entry.map_err(ArchiveError::walk(root))?;
        let kind = entry.file_type();
        if kind.is_dir() {
            continue;
        }
        let relative = entry.path().strip_prefix(root).expect("walkdir stays under its root");
        let name = relative
            .to_str()
            .ok_or_else(|| ArchiveError::Invalid(format!("{} is not UTF-8", relative.display())))?;
        if !kind.is_file() {
            return Err(ArchiveError::Invalid(format!("{name} is not a regular file")));
        }
        let size = entry.metadata().map_err(ArchiveError::walk(root))?.len();
        files.push(Listed {
            name: name.to_owned(),
            path: entry.path().to_owned(),
            size,
        });
    }
    Ok(files)
}

/// How many chunks a file of `size` bytes has; an empty file has one.
pub fn chunk_count(size: u64, chunk_size: u64) -> usize {
    size.div_ceil(chunk_size).max(1) as usize
}

/// The SHA-256 of every chunk of every file, hex, in file order.
pub fn hash_files(files: &[Listed], chunk_size: u64) -> Result<Vec<Vec<String>>, ArchiveError> {
    assert!(
        CHUNK_SIZES.contains(&chunk_size),
        "chunk size {chunk_size} out of range"
    );
    let jobs: Vec<(usize, usize)> = files
        .iter()
        .enumerate()
        .flat_map(|(f, file)| (0..chunk_count(file.size, chunk_size)).map(move |c| (f, c)))
        .collect();
    let digests: Vec<Mutex<Vec<String>>> = files
        .iter()
        .map(|file| Mutex::new(vec![String::new(); chunk_count(file.size, chunk_size)]))
        .collect();
    let next = AtomicUsize::new(0);
    let failure: Mutex<Option<ArchiveError>> = Mutex::new(None);
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(jobs.len())
        .max(1);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                let mut buffer = vec![0u8; READ_BUFFER];
                loop {
                    let job = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(f, c)) = jobs.get(job) else { break };
                    if failure.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                        break;
                    }
                    match hash_chunk(&files[f], c as u64 * chunk_size, chunk_size, &mut buffer) {
                        Ok(digest) => digests[f].lock().unwrap_or_else(|p| p.into_inner())[c] = digest,
                        Err(err) => {
                            failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(err);
                            break;
                        }
                    }
                }
            });
        }
    });
    if let Some(err) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(err);
    }
    Ok(digests
        .into_iter()
        .map(|d| d.into_inner().unwrap_or_else(|p| p.into_inner()))
        .collect())
}

fn hash_chunk(file: &Listed, offset: u64, chunk_size: u64, buffer: &mut [u8]) -> Result<String, ArchiveError> {
    let handle = std::fs::File::open(&file.path).map_err(ArchiveError::io(&file.path))?;
    let end = file.size.min(offset + chunk_size);
    let mut hasher = Sha256::new();
    let mut at = offset;
    while at < end {
        let want = buffer.len().min((end - at) as usize);
        let n = handle
            .read_at(&mut buffer[..want], at)
            .map_err(ArchiveError::io(&file.path))?;
        if n == 0 {
            return Err(ArchiveError::Invalid(format!(
                "{} shrank while it was being hashed",
                file.name
            )));
        }
        hasher.update(&buffer[..n]);
        at += n as u64;
    }
    Ok(format!("{:x}", hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256_hex(bytes: &[u8]) -> String {
        format!("{:x}", Sha256::digest(bytes))
    }

    #[test]
    fn each_chunk_is_the_plain_sha256_of_its_range() {
        let dir = tempfile::tempdir().unwrap();
        let chunk = 1u64 << 20;
        let data: Vec<u8> = (0..(2 * chunk + 5)).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("big"), &data).unwrap();
        std::fs::write(dir.path().join("empty"), b"").unwrap();
        let files = list(dir.path()).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["big", "empty"]);

        let digests = hash_files(&files, chunk).unwrap();
        let c = chunk as usize;
        assert_eq!(
            digests[0],
            [
                sha256_hex(&data[..c]),
                sha256_hex(&data[c..2 * c]),
                sha256_hex(&data[2 * c..])
            ]
        );
        assert_eq!(digests[1], [sha256_hex(b"")]);
    }

    #[test]
    fn a_file_that_shrinks_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), vec![1u8; 4096]).unwrap();
        let files = list(dir.path()).unwrap();
        std::fs::write(dir.path().join("f"), b"short").unwrap();
        let err = hash_files(&files, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("shrank"), "{err}");
    }
}

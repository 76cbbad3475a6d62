//! Room on a file system for a checkpoint: what an import checks before it
//! writes, and what the pre-flight check weighs against a pod's size.

use std::path::Path;

/// What a file system has left for an unprivileged writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Available {
    pub bytes: u64,
    /// None on a file system that does not count inodes.
    pub inodes: Option<u64>,
}

/// The room left on the file system that holds `dir`.
pub fn available(dir: &Path) -> std::io::Result<Available> {
    let stat = nix::sys::statvfs::statvfs(dir)?;
    Ok(Available {
        bytes: (stat.blocks_available() as u64).saturating_mul(stat.fragment_size() as u64),
        inodes: (stat.files() > 0).then_some(stat.files_available() as u64),
    })
}

/// The bytes of every regular file under `dir`, links not followed.
pub fn tree_size(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Bytes for a person: B, KiB, MiB, GiB, TiB.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_a_person_writes_them() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 20), "3.0 MiB");
        assert_eq!(human(5 << 30), "5.0 GiB");
    }
}

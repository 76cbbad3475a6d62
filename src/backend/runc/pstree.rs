//! CRIU's process tree image (`pstree.img`, entries of `images/pstree.proto`),
//! read for two facts: the highest PID a checkpointed container's processes
//! and threads held in their PID namespace (a restore into a PID namespace
//! that other processes share, the pod's, needs every one of them free), and
//! which processes a lazy restore's page daemon will hear from.

use std::path::Path;

use super::image::Image;
use crate::backend::RestoreError;

const PSTREE_MAGIC: u32 = 0x5027_3030;
/// The file CRIU writes the tree to, in its images directory.
pub const PSTREE_IMAGE: &str = "pstree.img";

/// `pstree_entry`, as CRIU numbers its fields.
#[derive(Clone, PartialEq, prost::Message)]
struct PstreeEntry {
    #[prost(uint32, required, tag = "1")]
    pid: u32,
    #[prost(uint32, required, tag = "2")]
    ppid: u32,
    #[prost(uint32, required, tag = "3")]
    pgid: u32,
    #[prost(uint32, required, tag = "4")]
    sid: u32,
    #[prost(uint32, repeated, packed = "false", tag = "5")]
    threads: Vec<u32>,
}

/// The highest PID, thread id, process group or session id in `image`.
pub fn highest_pid(image: &Path) -> Result<u32, RestoreError> {
    let mut highest = 0;
    for entry in entries(image)? {
        let ids = [entry.pid, entry.pgid, entry.sid].into_iter().chain(entry.threads);
        highest = ids.fold(highest, u32::max);
    }
    Ok(highest)
}

/// Every process of the tree, as CRIU numbers them in its other images
/// (`pagemap-PID.img`): the PIDs they had in their own namespace.
pub fn processes(image: &Path) -> Result<Vec<u32>, RestoreError> {
    Ok(entries(image)?.into_iter().map(|e| e.pid).collect())
}

fn entries(image: &Path) -> Result<Vec<PstreeEntry>, RestoreError> {
    Image::open(image, PSTREE_MAGIC, "process tree")?.entries().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn image(entries: &[PstreeEntry]) -> Vec<u8> {
        let bodies: Vec<_> = entries.iter().map(Message::encode_to_vec).collect();
        crate::backend::runc::image::encode(PSTREE_MAGIC, &bodies)
    }

    fn entry(pid: u32, ppid: u32, threads: &[u32]) -> PstreeEntry {
        PstreeEntry {
            pid,
            ppid,
            pgid: pid.min(ppid.max(1)),
            sid: 8,
            threads: threads.to_vec(),
        }
    }

    #[test]
    fn the_highest_of_pids_and_threads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PSTREE_IMAGE);
        std::fs::write(
            &path,
            image(&[entry(8, 0, &[8]), entry(51, 8, &[51, 97]), entry(40, 8, &[40])]),
        )
        .unwrap();
        assert_eq!(highest_pid(&path).unwrap(), 97);
        assert_eq!(processes(&path).unwrap(), [8, 51, 40]);
    }

    #[test]
    fn what_is_not_a_process_tree_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PSTREE_IMAGE);
        std::fs::write(&path, b"not an image").unwrap();
        assert!(
            highest_pid(&path)
                .unwrap_err()
                .to_string()
                .contains("not a CRIU process tree image")
        );
        let mut cut = image(&[entry(8, 0, &[8])]);
        cut.truncate(cut.len() - 1);
        std::fs::write(&path, cut).unwrap();
        assert!(highest_pid(&path).unwrap_err().to_string().contains("cut short"));
        assert!(highest_pid(&dir.path().join("none")).is_err());
    }
}

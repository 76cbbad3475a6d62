//! CRIU's process tree image (`pstree.img`), read for one fact: the highest
//! PID a checkpointed container's processes and threads held in their PID
//! namespace. A restore into a PID namespace that other processes share
//! (the pod's) needs every one of those PIDs free.
//!
//! The format (CRIU's `images/pstree.proto` and `criu/include/magic.h`):
//! two 32-bit magics, then entries, each a 32-bit native-endian length and
//! a `pstree_entry` protobuf message.

use std::path::Path;

use crate::backend::RestoreError;

/// CRIU's first magic of every image but its service files.
const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
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
    let bad = |why: String| RestoreError::Io(format!("{}: {why}", image.display()));
    let bytes = std::fs::read(image).map_err(|e| bad(e.to_string()))?;
    let word = |at: usize| -> Option<u32> { Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?)) };
    if word(0) != Some(IMG_COMMON_MAGIC) || word(4) != Some(PSTREE_MAGIC) {
        return Err(bad("not a CRIU process tree image".into()));
    }
    let mut at = 8;
    let mut highest = 0;
    while at < bytes.len() {
        let len = word(at).ok_or_else(|| bad("cut short in an entry's length".into()))? as usize;
        let body = bytes
            .get(at + 4..at + 4 + len)
            .ok_or_else(|| bad("cut short in an entry".into()))?;
        let entry = <PstreeEntry as prost::Message>::decode(body).map_err(|e| bad(e.to_string()))?;
        let ids = [entry.pid, entry.pgid, entry.sid].into_iter().chain(entry.threads);
        highest = ids.fold(highest, u32::max);
        at += 4 + len;
    }
    Ok(highest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn image(entries: &[PstreeEntry]) -> Vec<u8> {
        let mut bytes = [IMG_COMMON_MAGIC.to_ne_bytes(), PSTREE_MAGIC.to_ne_bytes()].concat();
        for entry in entries {
            let body = entry.encode_to_vec();
            bytes.extend((body.len() as u32).to_ne_bytes());
            bytes.extend(body);
        }
        bytes
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

//! CRIU's protobuf image files (`criu/include/magic.h`, `images/*.proto`):
//! two 32-bit magics, then entries, each a 32-bit native-endian length and
//! one message.

use std::path::{Path, PathBuf};

use crate::backend::RestoreError;

/// CRIU's first magic of every image but its service files.
const IMG_COMMON_MAGIC: u32 = 0x5456_4319;

/// One image file, read whole.
pub struct Image {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl Image {
    /// Reads `path` and checks that it is the image `magic` names.
    pub fn open(path: &Path, magic: u32, what: &str) -> Result<Self, RestoreError> {
        let bytes = std::fs::read(path).map_err(|e| RestoreError::Io(format!("{}: {e}", path.display())))?;
        let image = Self {
            path: path.to_owned(),
            bytes,
        };
        if image.word(0) != Some(IMG_COMMON_MAGIC) || image.word(4) != Some(magic) {
            return Err(image.bad(&format!("not a CRIU {what} image")));
        }
        Ok(image)
    }

    /// Its entries, each decoded as `M`.
    pub fn entries<M: prost::Message + Default>(&self) -> impl Iterator<Item = Result<M, RestoreError>> + '_ {
        self.bodies()
            .map(|body| body.and_then(|b| M::decode(b).map_err(|e| self.bad(&e.to_string()))))
    }

    /// Its entries' undecoded bodies, for an image whose entries differ in
    /// type (a pagemap's head, then its entries).
    pub fn bodies(&self) -> impl Iterator<Item = Result<&[u8], RestoreError>> + '_ {
        let mut at = 8;
        std::iter::from_fn(move || {
            if at >= self.bytes.len() {
                return None;
            }
            let Some(len) = self.word(at) else {
                at = usize::MAX;
                return Some(Err(self.bad("cut short in an entry's length")));
            };
            let body = self.bytes.get(at + 4..at + 4 + len as usize);
            at = at.saturating_add(4 + len as usize);
            Some(body.ok_or_else(|| self.bad("cut short in an entry")))
        })
    }

    pub fn bad(&self, why: &str) -> RestoreError {
        RestoreError::Io(format!("{}: {why}", self.path.display()))
    }

    fn word(&self, at: usize) -> Option<u32> {
        Some(u32::from_ne_bytes(self.bytes.get(at..at + 4)?.try_into().ok()?))
    }
}

/// An image of `magic` holding `bodies`, as CRIU writes one.
#[cfg(test)]
pub fn encode(magic: u32, bodies: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes = [IMG_COMMON_MAGIC.to_ne_bytes(), magic.to_ne_bytes()].concat();
    for body in bodies {
        bytes.extend((body.len() as u32).to_ne_bytes());
        bytes.extend(body);
    }
    bytes
}

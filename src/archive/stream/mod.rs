//! A checkpoint as one stream, to carry a pod to another node: `podckpt
//! export` writes it, `podckpt import` checks every byte of it while it
//! unpacks it.
//!
//! ```text
//! [age (X25519, ChaCha20-Poly1305), when exported to a recipient]
//!   zstd frame(s), with zstd's content checksum
//!     tar (GNU headers; regular files only, mode 0600, owner 0)
//!       manifest.json        first, so that each later file is checked as it arrives
//!       every file the manifest lists, in its order
//! ```
//!
//! The manifest is the only source of truth on the way in: a file it does
//! not list, a size or a chunk digest it does not give, anything but a
//! regular file, and a stream that ends early are all refused, and the
//! destination is left as it was. A checkpoint is whole only once its
//! manifest is written, last, as podckptd writes its own (see `Building`).

mod crypt;
mod destination;
mod export;
mod import;

pub use crypt::{Identities, Recipients, generate_identity};
pub use export::{ExportOptions, Exported, export};
pub use import::{ImportOptions, Imported, import};

use super::ArchiveError;

/// The zstd level export uses unless told otherwise. Chosen by measurement
/// (docs/BENCHMARKS.md): page images of a typical heap shrink several times
/// at level 1 and little more above it, while each level up costs time on
/// every core; random pages do not shrink at any level.
pub const DEFAULT_LEVEL: i32 = 1;

/// The manifest of a large pod is a few hundred KiB; anything near this
/// is not a manifest podckptd wrote.
const MANIFEST_LIMIT: u64 = 64 << 20;

/// What a tar stream may carry after its end: the zero blocks that pad it
/// to a record. More than this is refused as data that is not part of the
/// checkpoint.
const TRAILER_LIMIT: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Something in the stream that a checkpoint cannot hold, or that
    /// does not match its manifest; `entry` is its name in the stream.
    #[error("{entry}: {why}")]
    Refused { entry: String, why: String },
    #[error("the stream ends early: {0}")]
    Truncated(String),
    #[error("{0}")]
    Encryption(String),
    /// Where the import was to write.
    #[error("{0}")]
    Destination(String),
    /// What export was given to read.
    #[error("{0}")]
    Source(String),
    /// The import's writer stopped; its own error says why.
    #[error("{0}")]
    Handover(String),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
}

impl StreamError {
    fn refused(entry: impl Into<String>, why: impl Into<String>) -> Self {
        Self::Refused {
            entry: entry.into(),
            why: why.into(),
        }
    }

    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }

    /// An error met while reading the stream: the end of the input is a
    /// stream cut short; anything else is passed on with `context`.
    fn reading(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| match source.kind() {
            std::io::ErrorKind::UnexpectedEof => Self::Truncated(format!("{context}: {source}")),
            _ => Self::Io { context, source },
        }
    }
}

#[cfg(test)]
mod tests;

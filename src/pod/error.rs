//! Why a pod operation failed, and the gRPC status each reason becomes.

use std::time::Duration;

use tonic::{Code, Status};

use crate::archive::ArchiveError;
use crate::backend::BackendError;

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// Another call holds what this one needs: the pod, or the output directory.
    #[error("{0}")]
    Busy(String),
    /// An error the runtime below returned, passed on with its own code.
    #[error("{context}: {}", status.message())]
    Runtime { context: String, status: Status },
    #[error("checkpoint backend: {0}")]
    Backend(#[from] BackendError),
    #[error("checkpoint archive: {0}")]
    Archive(#[from] ArchiveError),
    /// `undone` tells the caller what was cleaned up, so it knows nothing is left.
    #[error("the deadline of {limit:?} ran out; {undone}")]
    DeadlineExceeded { limit: Duration, undone: &'static str },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl PodError {
    pub fn runtime(context: impl Into<String>) -> impl FnOnce(Status) -> Self {
        move |status| Self::Runtime {
            context: context.into(),
            status,
        }
    }

    /// For a task of ours that panicked or was cancelled.
    pub fn task(what: &'static str) -> impl FnOnce(tokio::task::JoinError) -> Self {
        move |e| Self::Internal(format!("{what} task: {e}"))
    }
}

impl From<PodError> for Status {
    fn from(err: PodError) -> Self {
        let code = match &err {
            PodError::InvalidArgument(_) => Code::InvalidArgument,
            PodError::FailedPrecondition(_) => Code::FailedPrecondition,
            PodError::PermissionDenied(_) => Code::PermissionDenied,
            PodError::NotFound(_) => Code::NotFound,
            PodError::AlreadyExists(_) => Code::AlreadyExists,
            PodError::Busy(_) => Code::Aborted,
            PodError::Runtime { status, .. } => status.code(),
            PodError::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            PodError::Unavailable(_) => Code::Unavailable,
            PodError::Backend(_) | PodError::Archive(_) | PodError::Internal(_) => Code::Internal,
        };
        Status::new(code, err.to_string())
    }
}

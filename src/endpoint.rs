//! Runtime endpoints in the form the kubelet accepts.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("endpoint {0:?} is empty")]
    Empty(String),
    #[error(
        "endpoint {0:?}: only unix:// endpoints are supported (for example unix:///run/containerd/containerd.sock)"
    )]
    UnsupportedScheme(String),
    #[error("endpoint {0:?}: the socket path must be absolute")]
    RelativePath(String),
}

/// A Unix socket endpoint, written `unix:///path` or as a bare absolute path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnixEndpoint {
    path: PathBuf,
}

impl UnixEndpoint {
    pub fn parse(s: &str) -> Result<Self, EndpointError> {
        let trimmed = s.trim();
        if trimmed.is_empty() {
            return Err(EndpointError::Empty(s.to_owned()));
        }
        let path = if let Some(rest) = trimmed.strip_prefix("unix://") {
            rest
        } else if trimmed.contains("://") {
            return Err(EndpointError::UnsupportedScheme(s.to_owned()));
        } else {
            trimmed
        };
        if !path.starts_with('/') {
            return Err(EndpointError::RelativePath(s.to_owned()));
        }
        Ok(Self {
            path: PathBuf::from(path),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl fmt::Display for UnixEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unix://{}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_kubelet_forms() {
        let e = UnixEndpoint::parse("unix:///run/containerd/containerd.sock").unwrap();
        assert_eq!(e.path(), Path::new("/run/containerd/containerd.sock"));
        assert_eq!(e.to_string(), "unix:///run/containerd/containerd.sock");
        let bare = UnixEndpoint::parse("/run/crio/crio.sock").unwrap();
        assert_eq!(bare.path(), Path::new("/run/crio/crio.sock"));
    }

    #[test]
    fn rejects_what_we_cannot_dial() {
        assert!(matches!(
            UnixEndpoint::parse("tcp://127.0.0.1:1"),
            Err(EndpointError::UnsupportedScheme(_))
        ));
        assert!(matches!(
            UnixEndpoint::parse("unix://run/x.sock"),
            Err(EndpointError::RelativePath(_))
        ));
        assert!(matches!(UnixEndpoint::parse(""), Err(EndpointError::Empty(_))));
    }
}

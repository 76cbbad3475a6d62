//! What each call ended with, in the log: a passed-through error must be as
//! visible in podckptd's log as in the runtime's, or an operator who put
//! podckptd in front of the kubelet cannot tell who failed a call.

use std::time::Duration;

use http::HeaderMap;
use tonic::Code;
use tracing::{debug, info, warn};

/// How a call ended for its caller: the gRPC code it got, and the message
/// where one is at hand without cost (the shim's own answers).
pub struct Ended {
    pub code: Code,
    pub message: Option<String>,
}

impl Ended {
    pub fn code(code: Code) -> Self {
        Self { code, message: None }
    }

    /// The status of a trailers-only answer, with its message decoded.
    pub fn with_message(headers: &HeaderMap) -> Option<Self> {
        let status = tonic::Status::from_header_map(headers)?;
        Some(Self {
            code: status.code(),
            message: Some(status.message().to_owned()),
        })
    }
}

/// The code in `grpc-status`, read without decoding anything else: this
/// runs on every call the shim passes through.
pub fn code_of(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?;
    std::str::from_utf8(value.as_bytes())
        .ok()?
        .parse::<i32>()
        .ok()
        .map(Code::from_i32)
}

/// gRPC's canonical name of a status code, as grpc-go and the kubelet log
/// it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Codes that say the node, not the caller, is at fault.
fn is_server_fault(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown | Code::Internal | Code::Unavailable | Code::DataLoss | Code::Unimplemented
    )
}

/// Logs one call: at debug every call, with its method, code and time; a
/// failed pod call (`own`) also at info, or at warn when the node is at
/// fault, with its message. A stream that ended without a status (reset,
/// or cut) is logged with what ended it.
pub fn log(method: &str, own: bool, result: &Result<Option<Ended>, h2::Error>, elapsed: Duration) {
    let elapsed_us = elapsed.as_micros() as u64;
    match result {
        Ok(Some(ended)) => {
            let code = code_name(ended.code);
            debug!(method, code, elapsed_us, "call");
            if own && ended.code != Code::Ok {
                let grpc_message = ended.message.as_deref().unwrap_or_default();
                if is_server_fault(ended.code) {
                    warn!(method, code, grpc_message, elapsed_us, "pod call failed");
                } else {
                    info!(method, code, grpc_message, elapsed_us, "pod call failed");
                }
            }
        }
        Ok(None) => debug!(method, code = "none", elapsed_us, "call ended without a gRPC status"),
        Err(error) => debug!(method, %error, elapsed_us, "call ended abnormally"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_canonical_name() {
        for n in 0..=16 {
            let code = Code::from_i32(n);
            let name = code_name(code);
            assert!(name.chars().all(|c| c.is_ascii_uppercase() || c == '_'), "{name}");
        }
        assert_eq!(code_name(Code::from_i32(5)), "NOT_FOUND");
        assert_eq!(code_name(Code::from_i32(9)), "FAILED_PRECONDITION");
    }

    #[test]
    fn the_code_is_read_from_grpc_status_alone() {
        let mut headers = HeaderMap::new();
        assert_eq!(code_of(&headers), None);
        headers.insert("grpc-status", "5".parse().unwrap());
        headers.insert("grpc-message", "no%20such%20container".parse().unwrap());
        assert_eq!(code_of(&headers), Some(Code::NotFound));
        let ended = Ended::with_message(&headers).unwrap();
        assert_eq!(ended.message.as_deref(), Some("no such container"));
        headers.insert("grpc-status", "x".parse().unwrap());
        assert_eq!(code_of(&headers), None);
    }
}

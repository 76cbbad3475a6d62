//! What each call ended with, in the log: a passed-through error must be as
//! visible in podckptd's log as in the runtime's, or an operator who put
//! podckptd in front of the kubelet cannot tell who failed a call.

use std::time::Duration;

use tonic::Code;
use tracing::{debug, info, warn};

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
pub fn log(method: &str, own: bool, result: &Result<Option<tonic::Status>, h2::Error>, elapsed: Duration) {
    let elapsed_us = elapsed.as_micros() as u64;
    match result {
        Ok(Some(status)) => {
            let code = code_name(status.code());
            debug!(method, code, elapsed_us, "call");
            if own && status.code() != Code::Ok {
                let grpc_message = status.message();
                if is_server_fault(status.code()) {
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
}

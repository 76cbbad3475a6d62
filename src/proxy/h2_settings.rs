//! HTTP/2 settings shared by both sides of the proxy.
//!
//! Windows are larger than HTTP/2's 64 KiB default so that a 64 MiB message
//! crosses the proxy without a flow-control round trip per 64 KiB, and fixed
//! rather than adaptive: adaptive windows send BDP pings, which gRPC-Go
//! servers may count against their keepalive policy.

pub const STREAM_WINDOW: u32 = 2 << 20;
pub const CONNECTION_WINDOW: u32 = 16 << 20;
pub const MAX_FRAME: u32 = 1 << 20;
/// gRPC-Go's default limit for a header block, so metadata that containerd
/// would accept is never refused by us.
pub const MAX_HEADER_LIST: u32 = 16 << 20;
pub const MAX_SEND_BUF: usize = 2 << 20;

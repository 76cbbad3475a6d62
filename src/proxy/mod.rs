//! The CRI pass-through: HTTP/2 in on our socket, HTTP/2 out to the runtime,
//! with no decoding in between. Messages, metadata, trailers, streams and
//! status codes reach the other side exactly as they were sent.

pub mod authority;
mod client_io;
mod h2_settings;
pub mod listener;
mod outcome;
mod relay;
mod router;
mod server;
pub mod upstream;

pub use outcome::code_name;
pub use router::Router;
pub use server::serve;
pub use upstream::Upstream;

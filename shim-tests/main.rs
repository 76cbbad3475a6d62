//! Tests of podckptd against the real containerd, runc and CNI of the test
//! bed. Every test here goes through the shim, often side by side with a
//! direct call to containerd to compare answers. They share one containerd,
//! so they run one at a time.

mod support;

mod access;
mod checkpoint;
mod cli;
mod contract;
mod crio;
mod gvisor;
mod interop;
mod lazy;
mod lifecycle;
mod passthrough;
mod pod_interop;
mod resilience;
mod restore;

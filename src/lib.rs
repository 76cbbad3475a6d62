//! podckpt: pod-level checkpoint and restore for Kubernetes nodes.
//!
//! `podckptd` sits between the kubelet and the container runtime. It forwards
//! every CRI call at the HTTP/2 level ([`proxy`]) and answers the pod-level
//! checkpoint calls itself ([`pod`]).

pub mod agent;
pub mod api;
pub mod archive;
pub mod backend;
pub mod cli;
pub mod config;
pub mod cri_client;
pub mod deadline;
pub mod endpoint;
pub mod interposer;
pub mod metrics;
pub mod pod;
pub mod proxy;
pub mod readiness;
pub mod telemetry;

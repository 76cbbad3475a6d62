//! Tests of podckptd against the real containerd, CRI-O, runc and CNI of
//! the test bed. Every test here goes through the shim, often side by side
//! with a direct call to the runtime to compare answers. They share the test
//! bed's runtimes, so they run one at a time.

/// Makes `case(tb: Testbed)` a test on each runtime of the test bed:
/// `case::containerd` and `case::crio`.
macro_rules! on_each_runtime {
    ($($case:ident),+ $(,)?) => {$(
        mod $case {
            #[tokio::test]
            #[serial_test::serial]
            async fn containerd() {
                if let Some(tb) = crate::support::testbed() {
                    super::$case(tb).await;
                }
            }

            #[tokio::test]
            #[serial_test::serial]
            async fn crio() {
                if let Some(tb) = crate::support::crio_testbed() {
                    super::$case(tb).await;
                }
            }
        }
    )+};
}

mod support;

mod access;
mod annotation;
mod capture_failures;
mod checkpoint;
mod cli;
mod contract;
mod crio;
mod gvisor;
mod interop;
mod kubelet;
mod kubernetes;
mod lazy;
mod lifecycle;
mod operability;
mod passthrough;
mod pod_interop;
mod preflight;
mod resilience;
mod restore;
mod testbed;
mod transfer;

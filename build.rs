// Compiles our own slice of the CRI schema: the two pod-level calls that
// podckpt answers itself. Every other CRI type comes from the k8s-cri crate.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/pod_checkpoint.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/pod_checkpoint.proto"], &["proto"])?;
    Ok(())
}

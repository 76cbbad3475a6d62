// Compiles our own slice of the CRI schema: the two pod-level calls that
// podckpt answers itself (every other CRI type comes from the k8s-cri crate),
// and podckpt's own services: the pre-flight check and checkpoints by name.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/pod_checkpoint.proto",
        "proto/preflight.proto",
        "proto/checkpoints.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}

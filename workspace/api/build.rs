//! Generates the gRPC server and client code of `proto/ovc/v1/*.proto` (tonic + prost),
//! and the file descriptor set the reflection service serves. protoc comes from
//! `protoc-bin-vendored`, so no system protoc is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let include = protoc_bin_vendored::include_path()?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("ovc_v1_descriptor.bin"))
        // decode errors are INVALID_ARGUMENT, not INTERNAL (src/grpc/codec.rs)
        .codec_path("crate::grpc::codec::ApiCodec")
        .compile_with_config(
            config,
            &[std::path::Path::new("proto/ovc/v1/ovc.proto")],
            &[std::path::Path::new("proto"), include.as_path()],
        )?;
    Ok(())
}

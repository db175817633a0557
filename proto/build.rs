//! Generates the Rust types from `taskraft/**.proto` with the vendored `protoc`, so
//! building needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY of intent: build scripts are single-threaded; prost-build reads PROTOC.
    std::env::set_var("PROTOC", protoc);
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("taskraft_descriptor.bin"))
        .bytes(".taskraft")
        .compile_protos(
            &["taskraft/v1/taskraft.proto", "taskraft/raft/v1/raft.proto"],
            &["."],
        )?;
    println!("cargo:rerun-if-changed=taskraft");
    Ok(())
}

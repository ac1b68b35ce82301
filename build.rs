//! Compiles our own `proto/` files (wire-compatible with TensorFlow Serving) with protox (pure Rust, no
//! `protoc` needed) and tonic-prost-build, and writes the file descriptor set that gRPC reflection serves.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let mut files = Vec::new();
    collect_protos(&PathBuf::from("proto"), &mut files)?;
    files.sort();
    let fds = protox::compile(&files, ["proto"])?;

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("maas_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // tensor_content and string_val decode as `bytes::Bytes`: slices of the request buffer, no copy.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}

fn collect_protos(dir: &PathBuf, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            // protox wants paths relative to the include root
            out.push(path.strip_prefix("proto").map(PathBuf::from).unwrap_or(path));
        }
    }
    Ok(())
}

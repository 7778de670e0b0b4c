//! Compiles the protobuf schemas under `proto/` with protox (no system `protoc`) and prost.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(
        [
            "onnx/onnx.proto",
            "rlap/v1/sample.proto",
            "rlap/v1/verdict.proto",
            "rlap/v1/model.proto",
        ],
        ["proto"],
    )?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}

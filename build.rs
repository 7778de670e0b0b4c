//! Compiles the protobuf schemas under `proto/` with protox (no system `protoc`) and prost,
//! and the proto3 JSON mapping of `rlap.v1` with pbjson-build.
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
    // Canonical proto3 JSON for rlap.v1 (serde impls beside prost's types): accepts the JSON
    // names and the proto field names, int64 as strings or numbers; unknown fields are ignored,
    // as proto3 JSON parsers do.
    let descriptors = prost::Message::encode_to_vec(&fds);
    prost_build::Config::new().compile_fds(fds)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .ignore_unknown_fields()
        .build(&[".rlap.v1"])?;
    Ok(())
}

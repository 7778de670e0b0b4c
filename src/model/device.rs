//! Device names (`cpu`, `cuda`, `cuda:N`) into candle devices, with one clear error where the
//! build has no CUDA.

use super::*;

/// Parse a device name: `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
///
/// # Errors
/// [`ModelError::Device`] with one line saying what to do: an unknown name, a binary built
/// without the `cuda` feature, or no visible GPU.
pub fn parse_device(name: &str) -> Result<Device, ModelError> {
    match name {
        "cpu" => Ok(Device::Cpu),
        _ if name == "cuda" || name.starts_with("cuda:") => {
            let ordinal: usize = name
                .strip_prefix("cuda:")
                .unwrap_or("0")
                .parse()
                .map_err(|_| ModelError::Device(format!("bad device '{name}': expected cuda:N")))?;
            cuda_device(ordinal)
        }
        _ => Err(ModelError::Device(format!(
            "unknown device '{name}': expected cpu | cuda | cuda:N"
        ))),
    }
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> Result<Device, ModelError> {
    Device::new_cuda(ordinal).map_err(|e| {
        // candle's error carries a multi-line backtrace: one line is enough here.
        let e = e.to_string();
        let e = e.lines().next().unwrap_or_default();
        ModelError::Device(format!(
            "cannot open GPU cuda:{ordinal} ({e}); is a GPU visible (nvidia-smi)?"
        ))
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(ordinal: usize) -> Result<Device, ModelError> {
    Err(ModelError::Device(format!(
        "device cuda:{ordinal} requested but this binary was built without the `cuda` feature; \
         rebuild with scripts/build-cuda.sh (see README, GPU)"
    )))
}

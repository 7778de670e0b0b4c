//! Inference with ONNX Runtime through `ort` (load-dynamic): finding the shared library without
//! the user exporting anything, initialising it once per process, and running an exported
//! model on a batch.
//!
//! Library search order: `$ORT_DYLIB_PATH`; `libonnxruntime.so*` beside the executable; the
//! project's `.cache/onnxruntime/onnxruntime/capi/` (filled by `scripts/setup-ort.sh`) under the
//! checkout the binary was built from, then under the current directory.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::session::Session;
use ort::value::TensorRef;

use super::export::{INPUT, OUTPUT};

/// The ONNX Runtime version the project pins (ort rc.15 refuses older libraries).
pub const ORT_VERSION: &str = "1.31.1";

/// Errors of the ONNX Runtime bridge.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The shared library was not found.
    #[error(
        "ONNX Runtime library not found (looked in {looked}); run scripts/setup-ort.sh or set ORT_DYLIB_PATH"
    )]
    NotFound { looked: String },
    /// `ORT_DYLIB_PATH` is set but names no file: an explicit choice is never ignored.
    #[error(
        "ORT_DYLIB_PATH={path} is not a file; point it at libonnxruntime.so.{ORT_VERSION} (or newer) or unset it"
    )]
    EnvPath { path: PathBuf },
    /// The library could not be loaded or initialised.
    #[error("cannot load ONNX Runtime from {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    /// Building a session or running it failed.
    #[error("ONNX Runtime: {0}")]
    Ort(#[from] ort::Error),
    /// The input does not match the model.
    #[error("bad input: {0}")]
    Input(String),
}

fn lib_name() -> String {
    format!("libonnxruntime.so.{ORT_VERSION}")
}

/// Candidate library paths, in search order (see the module docs).
pub fn candidate_paths() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        out.push(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        out.push(dir.join(lib_name()));
        out.push(dir.join("libonnxruntime.so"));
    }
    let rel = Path::new(".cache/onnxruntime/onnxruntime/capi").join(lib_name());
    out.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(&rel));
    out.push(rel);
    out
}

/// The first existing candidate library.
///
/// # Errors
/// [`RuntimeError::EnvPath`] when `ORT_DYLIB_PATH` names no file; [`RuntimeError::NotFound`]
/// listing the places searched.
pub fn find_library() -> Result<PathBuf, RuntimeError> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(RuntimeError::EnvPath { path: p });
        }
    }
    let c = candidate_paths();
    c.iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| RuntimeError::NotFound {
            looked: c
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// The process-wide ONNX Runtime environment, initialised on first use.
///
/// # Errors
/// [`RuntimeError::NotFound`] or [`RuntimeError::Load`].
pub fn environment() -> Result<&'static ort::environment::Environment, RuntimeError> {
    let path = find_library()?;
    ENVIRONMENT
        .get_or_init(|| {
            ort::init_from(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| b.with_name("rlap").build().map_err(|e| e.to_string()))
        })
        .as_ref()
        .map_err(|reason| RuntimeError::Load {
            path,
            reason: reason.clone(),
        })
}

/// The ONNX Runtime a process loaded (see [`loaded`]).
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct RuntimeInfo {
    /// The shared library's path.
    #[schema(value_type = String)]
    pub library: PathBuf,
    /// Its version (`OrtApiBase::GetVersionString`, e.g. `1.31.1`).
    pub version: String,
    /// The library's build string (`OrtApi::GetBuildInfoString`: version, git branch, commit).
    pub build: String,
}

/// Initialise ONNX Runtime (as [`environment`]) and describe what was loaded. Servers call it
/// at start-up so a missing, too old or broken library stops them with one line naming the
/// path tried and, for a version mismatch, the version found and the one required.
///
/// # Errors
/// [`RuntimeError::EnvPath`], [`RuntimeError::NotFound`] or [`RuntimeError::Load`].
pub fn loaded() -> Result<RuntimeInfo, RuntimeError> {
    let library = find_library()?;
    environment()?;
    Ok(RuntimeInfo {
        version: version_string(&library)?,
        library,
        build: ort::info().to_string(),
    })
}

/// The version string of the ONNX Runtime library at `path` (already loaded by
/// [`environment`]: opening it again only takes another reference).
fn version_string(path: &Path) -> Result<String, RuntimeError> {
    let load = |reason: String| RuntimeError::Load {
        path: path.into(),
        reason,
    };
    // SAFETY: the library is ONNX Runtime, already loaded and initialised by `ort` from this
    // path (its initialisers have run); OrtGetApiBase and GetVersionString take no arguments
    // and return static data (C API: "do not deallocate the returned buffer").
    unsafe {
        let lib = libloading::Library::new(path).map_err(|e| load(e.to_string()))?;
        let get_base: libloading::Symbol<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase> =
            lib.get(b"OrtGetApiBase").map_err(|e| load(e.to_string()))?;
        let base = get_base();
        if base.is_null() {
            return Err(load("OrtGetApiBase returned null".into()));
        }
        let s = ((*base).GetVersionString)();
        if s.is_null() {
            return Err(load("GetVersionString returned null".into()));
        }
        Ok(std::ffi::CStr::from_ptr(s).to_string_lossy().into_owned())
    }
}

/// An exported model loaded into ONNX Runtime. Thread-safe: runs are serialised.
pub struct OnnxModel {
    session: Mutex<Session>,
    input_dim: usize,
}

impl OnnxModel {
    /// Load serialized ONNX bytes; `input_dim` is D of the `[batch, D]` input.
    ///
    /// # Errors
    /// [`RuntimeError`] when the library or the model cannot be loaded.
    pub fn from_bytes(bytes: &[u8], input_dim: usize) -> Result<Self, RuntimeError> {
        let session = Session::builder(environment()?)?
            .with_intra_threads(1)
            .map_err(ort::Error::from)?
            .commit_from_memory(bytes)?;
        Ok(Self {
            session: Mutex::new(session),
            input_dim,
        })
    }

    /// Logits `[n, K]` (row-major) for `features` `[n, D]` (row-major).
    ///
    /// # Errors
    /// [`RuntimeError::Input`] when `features` is not a whole number of rows;
    /// [`RuntimeError::Ort`] when the run fails.
    pub fn logits(&self, features: &[f32]) -> Result<Vec<f32>, RuntimeError> {
        if self.input_dim == 0
            || !features.len().is_multiple_of(self.input_dim)
            || features.is_empty()
        {
            return Err(RuntimeError::Input(format!(
                "{} values is not a non-empty whole number of rows of {}",
                features.len(),
                self.input_dim
            )));
        }
        let n = features.len() / self.input_dim;
        // A view of the caller's buffer: no copy of the input.
        let input = TensorRef::from_array_view(([n, self.input_dim], features))?;
        let mut session = self
            .session
            .lock()
            .map_err(|_| RuntimeError::Input("session lock poisoned".into()))?;
        let outputs = session.run(ort::inputs![INPUT => input])?;
        let out = outputs.get(OUTPUT).ok_or_else(|| {
            RuntimeError::Input(format!("the model has no output named '{OUTPUT}'"))
        })?;
        let (_, logits) = out.try_extract_tensor::<f32>()?;
        Ok(logits.to_vec())
    }
}

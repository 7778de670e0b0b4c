//! The python of the client libraries' venv (`make setup-clients`: tritonclient, confluent-kafka,
//! numpy in `.cache/clients`), for the tests that drive rlap with real third-party clients.

use std::path::PathBuf;

/// `$RLAP_CLIENTS_PYTHON`, else `.cache/clients/bin/python` of this checkout. `None` (with a
/// message saying how to get it) when it is absent and CI is not set; under CI (`CI` set) a
/// missing venv is a failure, so CI cannot pass by skipping.
pub fn clients_python(test: &str) -> Option<PathBuf> {
    let py = std::env::var_os("RLAP_CLIENTS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/clients/bin/python")
        });
    if py.is_file() {
        return Some(py);
    }
    let msg = format!(
        "{test}: {} is missing; run `make setup-clients` (tritonclient, confluent-kafka and numpy \
         from PyPI into .cache/clients)",
        py.display()
    );
    assert!(std::env::var_os("CI").is_none(), "{msg}");
    eprintln!("SKIPPED {msg}");
    None
}

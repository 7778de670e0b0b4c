//! Option groups several subcommands share (`#[command(flatten)]`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;

use rlap::data::{default_data_dir, DatasetSpec};

/// `--dataset` and `--data-dir`.
#[derive(Args)]
pub struct DataArgs {
    /// mnist | fashion-mnist | idx:DIR[,K] | csv:TRAIN.csv,TEST.csv[,K] (K: number of classes)
    #[arg(long, default_value = "mnist")]
    pub dataset: DatasetSpec,
    /// Folder of the named data sets (default: $RLAP_DATA_DIR or ./data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl DataArgs {
    /// `--data-dir`, or the default.
    pub fn dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(default_data_dir)
    }
}

/// `--json PATH`: the report as JSON too.
#[derive(Args)]
pub struct JsonOut {
    /// Write the report as JSON here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl JsonOut {
    /// Write `value` (pretty JSON) when `--json` was given.
    pub fn write<T: Serialize>(&self, value: &T) -> Result<()> {
        let Some(path) = &self.json else {
            return Ok(());
        };
        let text = serde_json::to_string_pretty(value)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }
}

/// `--config PATH` of the daemon's commands.
#[derive(Args)]
pub struct ConfigArg {
    /// TOML configuration (see configs/default.toml); RLAP__SECTION__KEY variables override it.
    #[arg(long)]
    pub config: PathBuf,
}

/// A tokio runtime with two workers (the daemon's stages and the drivers' clients).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

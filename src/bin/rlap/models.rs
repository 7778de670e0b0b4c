//! The model store's subcommands: `publish` (a checkpoint as the next version) and
//! `serve-model` (the HTTP API over the store, no daemon).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use crate::args::runtime;

/// `rlap publish`'s options.
#[derive(Args)]
pub struct PublishArgs {
    /// Checkpoint written by `rlap experiment --save-checkpoint` (safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Model store folder.
    #[arg(long)]
    store: PathBuf,
    /// Model name inside the store.
    #[arg(long)]
    model: String,
    /// Versions kept per model.
    #[arg(long, default_value_t = 5)]
    retain: usize,
}

/// `rlap publish`.
pub fn publish(a: PublishArgs) -> Result<()> {
    let model = rlap::model::Model::load(&a.checkpoint, &candle_core::Device::Cpu)?;
    let store = rlap::store::ModelStore::open(&a.store, a.retain)?;
    let parent = store.latest(&a.model).ok();
    let meta = store.publish(
        &a.model,
        &model,
        rlap::store::PublishInfo {
            parent_version: parent,
            ..Default::default()
        },
    )?;
    println!(
        "published {} version {} to {}",
        meta.model,
        meta.version,
        store.version_dir(&meta.model, meta.version)?.display()
    );
    Ok(())
}

/// `rlap serve-model`'s options.
#[derive(Args)]
pub struct ServeModelArgs {
    /// Model store folder.
    #[arg(long)]
    store: PathBuf,
    /// Model name served by /v1/predict.
    #[arg(long)]
    model: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: std::net::SocketAddr,
    /// Bearer token for the admin endpoints (rollback, cycle); read from $RLAP_ADMIN_TOKEN when
    /// not given; without one they are disabled.
    #[arg(long)]
    admin_token: Option<String>,
    /// Seconds between checks of the store for a newer version.
    #[arg(long, default_value_t = 2.0)]
    poll_seconds: f64,
    /// Largest batch /v1/predict accepts.
    #[arg(long, default_value_t = 1024)]
    max_batch: usize,
}

/// `rlap serve-model`.
pub fn serve_model(a: ServeModelArgs) -> Result<()> {
    if !(a.poll_seconds > 0.0 && a.poll_seconds <= 86_400.0) {
        bail!("--poll-seconds must lie in (0, 86400]");
    }
    let store = rlap::store::ModelStore::open(&a.store, usize::MAX)?;
    let cfg = rlap::api::ServeConfig {
        bind: a.bind,
        model: a.model,
        admin_token: a
            .admin_token
            .or_else(|| std::env::var("RLAP_ADMIN_TOKEN").ok()),
        poll_interval: std::time::Duration::from_secs_f64(a.poll_seconds),
        max_batch: a.max_batch,
    };
    runtime()?.block_on(rlap::api::run(store, cfg))?;
    Ok(())
}

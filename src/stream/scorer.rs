//! The scorer stage (one OS thread): runs the [`Engine`] on the source's micro-batches and
//! the API's cycle requests, hands verdicts and model events to the sink, keeps the shared
//! status fresh, and hands periodic checkpoints to a writer thread
//! ([`crate::stream::state`]), so it never waits for an fsync.
//!
//! Invariant: **the scorer never blocks on I/O or on a cycle** — it reads one bounded channel
//! and writes another; cycles run on the engine's own thread and are polled between batches.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::stream::config::ValidConfig;
use crate::stream::cycle::CycleRecord;
use crate::stream::engine::{Checkpoint, Engine, EngineError, EngineStatus, Incoming};
use crate::stream::sink::SinkMsg;
use crate::stream::state;

/// Requests from the API to the scorer.
#[derive(Debug)]
pub enum Control {
    /// Run a cycle now.
    Cycle,
}

/// Whether this replica owns input partition 0 and so runs cycles: 0 or 1, and 2 before the
/// first assignment. Written by the source, read by a scorer that waits for the leader.
pub type LeaderFlag = std::sync::Arc<std::sync::atomic::AtomicU8>;

/// What the source sends the scorer.
pub enum ScorerMsg {
    /// A micro-batch of valid samples.
    Batch(Vec<Incoming>),
    /// Leadership (owning input partition 0) changed.
    Leader(bool),
    /// Housekeeping (every 500 ms): lets phases move on with no new sample.
    Tick,
}

/// The engine's latest status, shared with the API (`/v1/status`) and the demo.
pub type SharedStatus = Arc<Mutex<Option<EngineStatus>>>;

/// What the scorer ends with: the model version at exit and the cycle records.
pub struct ScorerExit {
    /// The version scoring at exit (0 before the first).
    pub model_version: u64,
    /// Every cycle's record.
    pub cycles: Vec<CycleRecord>,
}

/// The scorer stage, built from the configuration; [`Scorer::spawn`] starts its threads.
pub struct Scorer {
    engine: Engine,
    state_dir: std::path::PathBuf,
    checkpoint_interval: Duration,
    status: SharedStatus,
    leader_flag: LeaderFlag,
}

impl Scorer {
    /// The scorer for `engine`, checkpointing into `state.dir` every
    /// `state.checkpoint_interval_secs` (and after every cycle).
    pub fn new(
        cfg: &ValidConfig,
        engine: Engine,
        status: SharedStatus,
        leader_flag: LeaderFlag,
    ) -> Self {
        Scorer {
            engine,
            state_dir: cfg.state.dir.clone(),
            checkpoint_interval: Duration::from_secs(cfg.state.checkpoint_interval_secs.max(1)),
            status,
            leader_flag,
        }
    }

    /// Start the checkpoint writer and the scorer thread (`rlap-checkpoint`, `rlap-scorer`).
    /// The scorer runs until `rx` closes (the source stopped) or the engine fails; then it
    /// finishes a running cycle, writes the final checkpoint and returns.
    ///
    /// # Errors
    /// The OS refused a thread.
    pub fn spawn(
        self,
        rx: mpsc::Receiver<ScorerMsg>,
        control: mpsc::Receiver<Control>,
        sink: mpsc::Sender<SinkMsg>,
    ) -> std::io::Result<JoinHandle<Result<ScorerExit, EngineError>>> {
        // Checkpoints are written by their own thread (JSON + fsync + rename can take hundreds
        // of milliseconds on a busy disk; the scorer must not wait for it). One pending at
        // most: if the writer is still busy, this interval's snapshot is skipped.
        let (cp_tx, cp_rx) = std::sync::mpsc::sync_channel::<Checkpoint>(1);
        let writer = {
            let dir = self.state_dir.clone();
            std::thread::Builder::new()
                .name("rlap-checkpoint".into())
                .spawn(move || {
                    while let Ok(cp) = cp_rx.recv() {
                        if let Err(e) = state::save(&dir, &cp) {
                            tracing::warn!(error = %e, "checkpoint failed");
                        }
                    }
                })
                .map_err(|e| std::io::Error::new(e.kind(), format!("the checkpoint writer: {e}")))?
        };
        std::thread::Builder::new()
            .name("rlap-scorer".into())
            .spawn(move || self.run(rx, control, sink, cp_tx, writer))
            .map_err(|e| std::io::Error::new(e.kind(), format!("the scorer: {e}")))
    }

    fn run(
        self,
        mut rx: mpsc::Receiver<ScorerMsg>,
        mut control: mpsc::Receiver<Control>,
        sink: mpsc::Sender<SinkMsg>,
        cp_tx: std::sync::mpsc::SyncSender<Checkpoint>,
        writer: JoinHandle<()>,
    ) -> Result<ScorerExit, EngineError> {
        let Scorer {
            mut engine,
            state_dir,
            checkpoint_interval: interval,
            status,
            leader_flag,
        } = self;
        let mut last_checkpoint = Instant::now();
        let mut out = Vec::new();
        let mut events = Vec::new();
        let mut result = Ok(());
        *status.lock().expect("status lock") = Some(engine.status());
        let mut last_status = Instant::now();
        loop {
            // A follower holding its bootstrap window takes no more samples until the leader's
            // first model is in the store: it ticks (store check, leadership from the source's
            // flag) while its queue fills and the source pauses the input.
            let msg = if engine.waiting_for_first_model() {
                if rx.is_closed() {
                    break; // shutting down: the held samples are re-delivered after the restart
                }
                std::thread::sleep(Duration::from_millis(200));
                match leader_flag.load(Ordering::Relaxed) {
                    1 => ScorerMsg::Leader(true),
                    _ => ScorerMsg::Tick,
                }
            } else {
                match rx.blocking_recv() {
                    Some(m) => m,
                    None => break,
                }
            };
            while let Ok(Control::Cycle) = control.try_recv() {
                engine.request_cycle();
            }
            let idle = matches!(msg, ScorerMsg::Tick);
            let r = match msg {
                ScorerMsg::Batch(b) => engine.process(b, &mut out, &mut events),
                // A leadership change or an idle tick can move a phase on with no new sample: a
                // new leader bootstraps from what it holds, a follower that adopted the leader's
                // first model warms up on its held samples.
                ScorerMsg::Leader(l) => {
                    engine.set_leader(l);
                    engine.process(vec![], &mut out, &mut events)
                }
                ScorerMsg::Tick => engine.process(vec![], &mut out, &mut events),
            };
            if let Err(e) = r {
                tracing::error!(error = %e, "the scoring engine failed; stopping");
                result = Err(e);
                break;
            }
            let cycles_before = events.len();
            if !out.is_empty()
                && sink
                    .blocking_send(SinkMsg::Verdicts(std::mem::take(&mut out)))
                    .is_err()
            {
                break;
            }
            for ev in events.drain(..) {
                let _ = sink.blocking_send(SinkMsg::Event(ev));
            }
            if cycles_before > 0 || last_checkpoint.elapsed() >= interval {
                let _ = cp_tx.try_send(engine.checkpoint());
                last_checkpoint = Instant::now();
            }
            // The status (for /v1/status and the demo) clones the cycle records: refresh it a few
            // times a second (and on every idle tick), not after every micro-batch.
            if idle || last_status.elapsed() >= Duration::from_millis(200) {
                *status.lock().expect("status lock") = Some(engine.status());
                last_status = Instant::now();
            }
        }
        // Drain: finish a running cycle, announce, checkpoint.
        engine.finish(&mut events);
        for ev in events.drain(..) {
            let _ = sink.blocking_send(SinkMsg::Event(ev));
        }
        let held = engine.held();
        if held > 0 {
            tracing::info!(held, "samples still in bootstrap/warm-up get their verdicts after the next start (offsets not stored)");
        }
        drop(cp_tx);
        let _ = writer.join();
        state::save(&state_dir, &engine.checkpoint())?;
        tracing::info!(
            version = engine.version(),
            "scorer stopped; checkpoint written"
        );
        let st = engine.status();
        *status.lock().expect("status lock") = Some(st.clone());
        result?;
        Ok(ScorerExit {
            model_version: engine.version(),
            cycles: st.cycles,
        })
    }
}

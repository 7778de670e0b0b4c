//! Progress reporting for long work (training epochs, attribution passes) with indicatif.
//!
//! This module owns the one switch between bars on a terminal and silence (`--quiet`, or
//! tests): callers ask for a bar and never check whether it is visible.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Hands out progress bars, or hidden ones when quiet.
#[derive(Clone)]
pub struct Progress {
    multi: Option<MultiProgress>,
}

impl Progress {
    /// Bars drawn on standard error (indicatif hides them itself when stderr is not a terminal).
    pub fn visible() -> Self {
        Self {
            multi: Some(MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
        }
    }

    /// No output at all.
    pub fn hidden() -> Self {
        Self { multi: None }
    }

    /// A bar of `len` steps labelled `label`.
    pub fn bar(&self, len: u64, label: &str) -> ProgressBar {
        match &self.multi {
            None => ProgressBar::hidden(),
            Some(m) => {
                let bar = m.add(ProgressBar::new(len));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{spinner} {prefix:>10} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
                    )
                    .expect("static template")
                    .progress_chars("=> "),
                );
                bar.set_prefix(label.to_string());
                bar
            }
        }
    }
}

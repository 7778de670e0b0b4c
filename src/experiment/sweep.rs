//! `rlap experiment --sweep`: the experiment re-run over corruption rates, or one Initial and
//! partition pruned and fine-tuned with several criteria (`none`: fine-tuned unpruned, the
//! ablation that says whether pruning helps), and the summary table of every run.

use std::str::FromStr;

use super::*;

/// What a sweep varies.
#[derive(Clone, Debug, PartialEq)]
pub enum SweepSpec {
    /// `rates:R1,R2,...`: the whole experiment at each corruption rate in [0, 1].
    Rates(Vec<f64>),
    /// `criteria:C1,C2,...`: one Initial and partition, each criterion pruned (with its prune
    /// fraction; `none` = [`Criterion::Rlap`] at fraction 0) and fine-tuned from it.
    Criteria(Vec<(Criterion, f64)>),
}

impl FromStr for SweepSpec {
    type Err = ExperimentError;

    /// Parse `rates:...` or `criteria:...`; a criterion's prune fraction is filled in by
    /// [`sweep`] from the base configuration (here: `NaN`, `none`: 0).
    fn from_str(spec: &str) -> Result<Self, ExperimentError> {
        let bad = |why: String| ExperimentError::Invalid(format!("bad --sweep '{spec}': {why}"));
        let (kind, list) = spec
            .split_once(':')
            .ok_or_else(|| bad("expected rates:R1,R2,... or criteria:C1,C2,...".into()))?;
        let items = list.split(',').filter(|s| !s.is_empty());
        match kind {
            "rates" => items
                .map(|r| match r.parse::<f64>() {
                    Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
                    _ => Err(ExperimentError::Invalid(format!(
                        "bad rate '{r}' in --sweep: expected a number in [0, 1]"
                    ))),
                })
                .collect::<Result<_, _>>()
                .map(SweepSpec::Rates),
            "criteria" => items
                .map(|c| match c {
                    "none" => Ok((Criterion::Rlap, 0.0)),
                    c => c
                        .parse::<Criterion>()
                        .map(|x| (x, f64::NAN))
                        .map_err(|e| ExperimentError::Invalid(e.to_string())),
                })
                .collect::<Result<_, _>>()
                .map(SweepSpec::Criteria),
            _ => Err(bad("expected rates:... or criteria:...".into())),
        }
    }
}

/// Run the sweep from `base`; each report goes to `on_report` as soon as it is done (the CLI
/// prints its table), and all of them are returned.
///
/// # Errors
/// [`ExperimentError::Invalid`] for a rate sweep over a corruption without a rate; any step's
/// error.
pub fn sweep(
    base: &ExperimentConfig,
    spec: &SweepSpec,
    progress: &Progress,
    mut on_report: impl FnMut(&ExperimentReport),
) -> Result<Vec<ExperimentReport>, ExperimentError> {
    let mut reports = Vec::new();
    match spec {
        SweepSpec::Rates(rates) => {
            if matches!(
                base.corruption,
                Corruption::None | Corruption::LabelMatrix { .. }
            ) {
                return Err(ExperimentError::Invalid(format!(
                    "--sweep rates needs a corruption with a rate (input-gaussian, label-symmetric, label-pair), not '{}'",
                    base.corruption
                )));
            }
            let mut oracle = None;
            for &rate in rates {
                let cfg = ExperimentConfig {
                    corruption: base.corruption.with_rate(rate),
                    ..base.clone()
                };
                let data = prepare(&cfg)?;
                let (report, _, _) = run(&cfg, &data, oracle.clone(), progress)?;
                if cfg.corruption.is_label_noise() {
                    // Label noise leaves the inputs alone: the Oracle's training data is the same.
                    oracle = report.row("Oracle").cloned();
                }
                on_report(&report);
                reports.push(report);
            }
        }
        SweepSpec::Criteria(criteria) => {
            let t0 = Instant::now();
            let data = prepare(base)?;
            let s1 = stage1(base, &data, progress)?;
            let spec = s1.initial.spec().clone();
            let clean = data.noisy.select(&s1.partition.clean_indices());
            let retrain = from_scratch(
                base,
                &spec,
                &clean,
                &data.test,
                "Retrain",
                base.seed.wrapping_add(1),
                progress,
            )?;
            let relabel = relabel_row(base, &spec, &data, &s1, progress)?;
            let oracle = oracle_row(base, &spec, &data, progress)?;
            for &(criterion, fraction) in criteria {
                let prune_fraction = if fraction.is_nan() {
                    base.prune_fraction
                } else {
                    fraction
                };
                let cfg = ExperimentConfig {
                    criterion,
                    prune_fraction,
                    ..base.clone()
                };
                let ft = prune_and_finetune(&cfg, &data, &s1, criterion, progress)?;
                let (mut rows, pruned, scoring) = (ft.rows, ft.pruned, ft.scoring_seconds);
                rows.insert(0, s1.initial_row.clone());
                rows.push(retrain.clone());
                rows.push(relabel.clone());
                rows.push(oracle.clone());
                let total = t0.elapsed().as_secs_f64();
                let mut report =
                    ExperimentReport::assemble(&cfg, &data, &s1, rows, pruned, scoring, total);
                report.regression_ridge_lambda = ft.ridge_lambda;
                on_report(&report);
                reports.push(report);
            }
        }
    }
    Ok(reports)
}

/// The summary of a sweep: one line per run (its rate, or its criterion; `none (no pruning)`
/// for fraction 0) with each row's test accuracy and the partition's F1.
pub fn sweep_table(spec: &SweepSpec, reports: &[ExperimentReport]) -> String {
    const ROWS: [&str; 8] = [
        "Initial", "Pruned", "L-FT", "F-FT", "Retrain", "Relabel", "Forward", "Oracle",
    ];
    let mut t = String::from("sweep summary (test accuracy; partition F1)\n");
    t += &format!("{:<22}", "run");
    for name in ROWS {
        t += &format!(" {name:>8}");
    }
    t += &format!(" {:>8}\n", "part.F1");
    for r in reports {
        let label = match spec {
            SweepSpec::Rates(_) => r.config.corruption.to_string(),
            SweepSpec::Criteria(_) if r.config.prune_fraction == 0.0 => {
                "none (no pruning)".to_string()
            }
            SweepSpec::Criteria(_) => r.config.criterion.to_string(),
        };
        t += &format!("{label:<22}");
        for name in ROWS {
            t += &format!(" {:>8.4}", r.row(name).map_or(f64::NAN, |x| x.accuracy));
        }
        t += &format!(" {:>8.4}\n", r.partition.f1);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_specs_parse_or_name_the_problem() {
        assert_eq!(
            "rates:0.2,0.4".parse::<SweepSpec>().unwrap(),
            SweepSpec::Rates(vec![0.2, 0.4])
        );
        match "criteria:rlap,none".parse::<SweepSpec>().unwrap() {
            SweepSpec::Criteria(c) => {
                assert_eq!(c[0].0, Criterion::Rlap);
                assert!(c[0].1.is_nan());
                assert_eq!(c[1], (Criterion::Rlap, 0.0));
            }
            other => panic!("{other:?}"),
        }
        for bad in ["rates:1.5", "rates", "criteria:nope", "sizes:1,2"] {
            let e = bad.parse::<SweepSpec>().unwrap_err().to_string();
            assert!(e.contains("--sweep") || e.contains("nope"), "{bad}: {e}");
        }
    }
}

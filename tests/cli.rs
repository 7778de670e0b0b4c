//! End-to-end tests of the `rlap` binary on real MNIST (run `scripts/setup-data.sh` first;
//! `make test` does).

use std::process::Command;

fn rlap() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rlap"))
}

#[test]
fn experiment_on_an_mnist_slice_prints_the_table_and_writes_reports() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let csv = dir.path().join("posteriors.csv");
    let out = rlap()
        .args([
            "--quiet",
            "experiment",
            "--dataset",
            "mnist",
            "--corruption",
            "label-symmetric:0.4",
            "--train-size",
            "3000",
            "--epochs",
            "3",
            "--finetune-epochs",
            "2",
            "--hidden",
            "64",
            "--seed",
            "3",
        ])
        .arg("--json")
        .arg(&json)
        .arg("--posteriors")
        .arg(&csv)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for row in [
        "Initial",
        "Pruned",
        "L-FT",
        "F-FT",
        "Retrain",
        "Relabel",
        "Forward",
        "Oracle",
        "partition",
    ] {
        assert!(stdout.contains(row), "missing {row} in\n{stdout}");
    }

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["train_samples"], 3000);
    let rows = report["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["Initial", "Pruned", "L-FT", "F-FT", "Retrain", "Relabel", "Forward", "Oracle"]
    );
    let p = &report["partition"];
    for key in [
        "precision",
        "recall",
        "f1",
        "auroc",
        "estimated_noise_rate",
        "true_noise_rate",
    ] {
        assert!(p[key].is_number(), "partition.{key}");
    }
    // 40 % symmetric noise on 3,000 digits: the label-gradient partition separates well above
    // chance even with a small model and few epochs.
    assert!(p["auroc"].as_f64().unwrap() > 0.85, "{p}");
    assert_eq!(
        report["pruned_neurons"].as_array().unwrap().len(),
        10,
        "round(0.156 * 64)"
    );
    let oracle = rows[6]["accuracy"].as_f64().unwrap();
    assert!(oracle > 0.85, "oracle accuracy {oracle}");
    // Label correction trains on more samples, mostly with their true class: better than
    // chance by far, and it keeps more samples than the clean partition alone.
    assert!(rows[5]["accuracy"].as_f64().unwrap() > 0.7, "{}", rows[5]);
    assert!(
        rows[5]["train_samples"].as_u64().unwrap() > rows[4]["train_samples"].as_u64().unwrap(),
        "Relabel keeps more samples than Retrain"
    );

    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "index,given_label,true_label,corrupted,posterior_noisy,predicted_noisy,\
         q0,q1,q2,q3,q4,q5,q6,q7,q8,q9"
    );
    let body: Vec<&str> = lines.collect();
    assert_eq!(body.len(), 3000);
    let corrupted = body
        .iter()
        .filter(|l| l.split(',').nth(3) == Some("1"))
        .count();
    assert!((corrupted as f64 / 3000.0 - 0.4).abs() < 0.05);
}

#[test]
fn bad_options_are_one_clear_error() {
    let out = rlap()
        .args(["experiment", "--corruption", "label-symmetric:1.5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("outside [0, 1]"), "{err}");

    let out = rlap()
        .args([
            "--quiet",
            "experiment",
            "--dataset",
            "idx:/nonexistent/rlap-data",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/rlap-data/train-images-idx3-ubyte"),
        "{err}"
    );

    let out = rlap()
        .args(["experiment", "--device", "cuda:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn a_bad_daemon_config_is_one_line_per_problem_and_the_shipped_ones_pass() {
    for ok in ["configs/default.toml", "configs/demo.toml"] {
        let out = rlap()
            .args(["check-config", "--config"])
            .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(ok))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{ok}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[trigger]\nnoisy_fraction = 2\n[kafka]\ntopic_partitions = 0\n",
    )
    .unwrap();
    let out = rlap()
        .args(["check-config", "--config"])
        .arg(&bad)
        .env("RLAP__SCORING__THRESHOLD", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 3, "{err}");
    for key in [
        "trigger.noisy_fraction",
        "kafka.topic_partitions",
        "scoring.threshold",
    ] {
        assert!(err.contains(key), "{key} missing in {err}");
    }
}

/// A server never starts half-alive without ONNX Runtime: an `ORT_DYLIB_PATH` that names no
/// file, or a file that is not the library, stops `serve-model` at once with one line naming
/// the path.
#[test]
fn serve_model_without_a_usable_runtime_exits_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_lib = dir.path().join("libonnxruntime.so.1.31.1");
    std::fs::write(&not_a_lib, b"not a shared library").unwrap();
    for (lib, expect) in [
        (
            "/nonexistent/libonnxruntime.so".to_string(),
            "ORT_DYLIB_PATH=/nonexistent/libonnxruntime.so is not a file",
        ),
        (
            not_a_lib.display().to_string(),
            "cannot load ONNX Runtime from",
        ),
    ] {
        let out = rlap()
            .args(["--quiet", "serve-model", "--store"])
            .arg(dir.path())
            .args(["--model", "m", "--bind", "127.0.0.1:0"])
            .env("ORT_DYLIB_PATH", &lib)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{lib}: started anyway");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{lib}: {err}");
        assert!(err.contains(&lib), "{lib}: the path is named: {err}");
    }
}

/// `--log-format json`: every stderr line is one JSON object with a level and a message.
#[test]
fn json_logs_are_one_object_per_line() {
    let out = rlap()
        .args([
            "--log-format",
            "json",
            "experiment",
            "--dataset",
            "mnist",
            "--train-size",
            "300",
            "--epochs",
            "1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log lines");
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{l}"
        );
    }
}

//! A publish killed mid-way (SIGKILL after every file is written, before the rename) leaves
//! no version that readers can see, and the next publish succeeds.

use std::process::Command;
use std::time::{Duration, Instant};

use candle_core::Device;
use rlap::model::{Arch, Model, ModelSpec};
use rlap::store::{ModelStore, METADATA_FILE};

#[test]
fn killed_publish_leaves_no_partial_version() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let ckpt = dir.path().join("m.safetensors");
    let spec = ModelSpec {
        arch: Arch::Mlp,
        input_dim: 784,
        image_shape: Some((1, 28, 28)),
        hidden: 32,
        num_classes: 10,
    };
    Model::new(spec, &Device::Cpu, 1)
        .unwrap()
        .save(&ckpt)
        .unwrap();
    let publish = |pause_ms: Option<u64>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rlap"));
        cmd.args(["--quiet", "publish", "--model", "digits"])
            .arg("--checkpoint")
            .arg(&ckpt)
            .arg("--store")
            .arg(&store_dir);
        if let Some(ms) = pause_ms {
            cmd.env("RLAP_FAILPOINT_PUBLISH_SLEEP_MS", ms.to_string());
        }
        cmd
    };
    assert!(publish(None).status().unwrap().success());
    let store = ModelStore::open(&store_dir, 5).unwrap();
    assert_eq!(store.versions("digits").unwrap(), vec![1]);

    // Second publish: wait until its temporary folder holds every file, then SIGKILL it.
    let mut child = publish(Some(30_000)).spawn().unwrap();
    let t = Instant::now();
    let tmp = loop {
        let found = std::fs::read_dir(store_dir.join("digits"))
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(".tmp-")
                    && p.join(METADATA_FILE).is_file()
            });
        if let Some(p) = found {
            break p;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "publish never reached its pause"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(tmp.exists(), "the crash left its temporary folder");
    assert_eq!(
        store.versions("digits").unwrap(),
        vec![1],
        "no partial version visible"
    );
    assert_eq!(store.latest("digits").unwrap(), 1);

    // The next publish succeeds, cleans up, and is version 2.
    assert!(publish(None).status().unwrap().success());
    assert_eq!(store.versions("digits").unwrap(), vec![1, 2]);
    assert!(!tmp.exists());
    assert_eq!(store.metadata("digits", 2).unwrap().parent_version, Some(1));
}

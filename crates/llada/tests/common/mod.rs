//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::Device;
use llada::{load_model, LoadedModel};

/// `../shared/golden/llada2-tiny`, found from the workspace root.
pub fn fixture_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = root.join("../shared/golden/llada2-tiny");
    assert!(
        dir.is_dir(),
        "golden fixtures not found at {} (the repository expects ../shared beside it)",
        dir.display()
    );
    dir
}

pub fn load_fixture() -> LoadedModel {
    load_model(&fixture_dir(), &Device::Cpu).expect("fixture loads")
}

pub fn golden() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture_dir().join("cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub mod naive;
pub mod synth;

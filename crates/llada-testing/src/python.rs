//! Runs a Python reference script: JSON in on stdin, JSON out on stdout. A script that
//! fails (a missing package, python3 absent) fails the test with its message.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

pub fn run_json(script: &Path, input: &serde_json::Value) -> serde_json::Value {
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("python3 must be installed to run {}: {e}", script.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{} failed (its Python packages are installed by .ci/run):\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

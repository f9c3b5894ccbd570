//! Helpers for the integration tests in `tests/tests/`: finding the built `ovc` binary,
//! and [`Harness`], a fresh store with an in-process worker on the simulated host (it
//! lives in `ovc_workflows::harness`, shared with the sweeps of the workflow files).

pub mod dev;

pub use ovc_workflows::harness::{Harness, HarnessOptions, fast_retries, name, project, submit};
use std::path::PathBuf;

/// The `ovc` binary built for this test run (`target/<profile>/ovc`).
pub fn ovc_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test-binary> -> target/<profile>/ovc
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile> directory");
    let bin = profile_dir.join(format!("ovc{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p ovc-cli); scripts/test.sh does",
        bin.display()
    );
    bin
}

//! Helpers for the black-box tests in `tests/tests/`: finding and running the built
//! `ovc` binary.

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
        "{} is missing: build it first (cargo build -p ovc-cli); cargo test --workspace and \
         cargo nextest run --workspace build it for you",
        bin.display()
    );
    bin
}

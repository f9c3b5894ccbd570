//! Services a step may use besides the host driver: today the snapshot artifact storage.

pub use ovc_snapshots::{ArtifactError, ArtifactStore};

/// The services handed to every step.
#[derive(Debug)]
pub struct Services {
    /// Snapshot artifact storage.
    pub artifacts: std::sync::Arc<dyn ArtifactStore>,
}

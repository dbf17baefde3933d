//! Warm-start speed, memory per row and fan-out of the cache, each beside its
//! reference. (Filled in once the client lands.)

use crate::env::{BoxError, Env};

/// Result rows (benchmark, figure, reference, ratio, target) and notes.
pub struct Section {
    pub rows: Vec<(String, String, String, String, String)>,
    pub notes: Vec<String>,
}

/// Warm start of `rows` rows beside COPY and a full replay.
pub async fn warm_start(_env: &Env, _rows: usize, _repeat: usize) -> Result<Section, BoxError> {
    Err("the warm-start benchmark is not written yet".into())
}

/// `n` caches starting at once under load.
pub async fn fan_out(_env: &Env, _n: usize) -> Result<Section, BoxError> {
    Err("the fan-out benchmark is not written yet".into())
}

//! Checkpoints: a ready cache's rows and positions in a file (placeholder until the
//! format and store modules are merged).

// Wired into the cache when the rest of the checkpoint module is merged.
#[allow(dead_code)]
pub(crate) mod http;

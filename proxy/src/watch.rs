//! `weir run --watch`: reloads the manifest when its content changes.
//!
//! The file is re-read by path every [`POLL`], so every way a file can change is seen the same
//! way: an edit in place, a rename over it, and the atomic symlink swap Kubernetes uses for
//! mounted ConfigMaps (`..data` re-pointed), which inotify on the old target would miss. A change
//! goes through [`Control::reload`], the admin endpoint's transaction: a broken manifest is
//! refused (and logged with its field paths) and the running generation keeps serving.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::control::{Control, ControlError};

/// How often the manifest is looked at.
pub const POLL: Duration = Duration::from_millis(200);

fn digest(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Follows `path` until the process exits.
pub async fn follow(path: PathBuf, control: Arc<Control>) {
    let mut last = std::fs::read(&path).ok().map(|b| digest(&b));
    let mut every = tokio::time::interval(POLL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        // Missing for a moment (mid-rename): keep the running config, look again.
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let d = digest(&bytes);
        if Some(d) == last {
            continue;
        }
        match control.reload(false).await {
            Ok(a) => {
                tracing::info!(target: "weir::audit", action = "reload", source = "watch", generation = a.generation, micros = a.micros, result = "published", "manifest changed: reloaded");
                last = Some(d);
            }
            Err(ControlError::Busy) => {} // another change is running: try again next time
            Err(e) => {
                tracing::error!(target: "weir::audit", action = "reload", source = "watch", result = "refused", error = %e, "manifest changed but was refused; the running config keeps serving");
                last = Some(d);
            }
        }
    }
}

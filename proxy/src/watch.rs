//! `weir run --watch`: reloads the manifest when its content changes.
//!
//! The file is re-read by path every [`POLL`], so every way a file can change is seen the same
//! way: an edit in place, a rename over it, and the atomic symlink swap Kubernetes uses for
//! mounted ConfigMaps (`..data` re-pointed), which inotify on the old target would miss. A change
//! goes through [`Control::reload`], the admin endpoint's transaction: a broken manifest is
//! refused (and logged with its field paths) and the running generation keeps serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::config::digest;
use crate::control::{Control, ControlError};

/// How often the manifest is looked at.
pub const POLL: Duration = Duration::from_millis(200);

/// Follows `path` until the process exits. The file is compared with the text the last reload
/// read ([`Control::manifest_seen`]: at first, the text weir started from), so a change made
/// before this task first runs is still seen, a `POST /reload` of the same change is not
/// repeated, and a refused text is not retried until the file changes again.
pub async fn follow(path: PathBuf, control: Arc<Control>) {
    let mut every = tokio::time::interval(POLL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        // Missing for a moment (mid-rename): keep the running config, look again.
        let read = std::fs::read(&path);
        control.watch_checks.fetch_add(1, Relaxed);
        let Ok(bytes) = read else {
            continue;
        };
        if digest(&bytes) == control.manifest_seen() {
            continue;
        }
        match control.reload(false).await {
            Ok(a) => {
                tracing::info!(target: "weir::audit", action = "reload", source = "watch", generation = a.generation, micros = a.micros, result = "published", "manifest changed: reloaded");
            }
            Err(ControlError::Busy) => {} // another change is running: try again next time
            Err(e) => {
                tracing::error!(target: "weir::audit", action = "reload", source = "watch", result = "refused", error = %e, "manifest changed but was refused; the running config keeps serving");
            }
        }
    }
}

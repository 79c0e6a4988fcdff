//! Runtime glue: hyper runs its per-connection tasks on the current worker's `LocalSet`, so no
//! future on the data path needs to be `Send`.

use std::future::Future;

/// A hyper executor that spawns onto the current thread's `LocalSet`.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

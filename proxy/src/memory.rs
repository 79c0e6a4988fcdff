//! Memory Weir hands back to the operating system once a burst of work is over.
//!
//! Compiling a Wasm module with Cranelift allocates tens of megabytes for a few hundred
//! milliseconds, on the compiling thread and on wasmtime's compile pool (rayon's global pool).
//! mimalloc frees those pages into its arenas and purges them to the OS only when a later
//! allocation on some thread gets round to it; an idle sidecar never does, so the compile's peak
//! stayed resident. [`release_after_compile`] asks every thread that compiled to purge at once:
//! the embedded default's idle anonymous RSS on two workers went from 103 to 54–57 MB
//! (benches/README.md, "Idle memory").
//!
//! The rest of the gap to a small sidecar is transparent huge pages: mimalloc asks for them for
//! its arenas, and a 2 MiB page stays resident while one small allocation lives in it. They also
//! make the request path about 10 % cheaper in CPU (measured side by side), so they stay on by
//! default; `MIMALLOC_ALLOW_THP=0` in weir's environment turns them off for the process (the
//! same default chain: 34 MB). The README's "Memory" section tells operators.

/// Purges the memory freed by compiling: on every thread of wasmtime's compile pool, then on the
/// calling thread (with the arenas' pending purges). Call it off the workers, after a compile
/// (`compiled`: whether anything was compiled rather than found in the module cache; without one
/// there is nothing to give back, and the compile pool may not even exist).
pub fn release_after_compile(compiled: bool) {
    if !compiled {
        return;
    }
    rayon::broadcast(|_| collect(true));
    collect(true);
}

#[allow(unsafe_code)]
fn collect(force: bool) {
    // SAFETY: `mi_collect` takes no pointers and may be called from any thread at any time; it
    // only returns free memory of mimalloc's own heaps and arenas to the OS. When mimalloc is
    // not the global allocator (the in-process tests), it touches only mimalloc's idle state.
    unsafe { libmimalloc_sys::mi_collect(force) }
}

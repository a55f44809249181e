//! Thread pools that share this process's cores out between threads that each run their own
//! model work (the parts of a split UNet call, the peers of data-parallel training).
//!
//! Burn-flex (and gemm inside it) hands its parallel loops to rayon. From a thread that is not a
//! rayon worker every such loop is a hand-off to the global pool's workers while the thread waits,
//! and the loops of all such threads queue in that one pool. On this project's 2-core machine two
//! training peers in the global pool kept 1.55 of the cores busy (the decoder stage of
//! `train_teacher`: 32.1 s of CPU in 20.7 s), in pools of their own 1.78 (29.0 s in 16.3 s).
//! Inside its own pool a thread's loops run on its own worker (inline with one thread), so each
//! keeps its share of the cores busy. Run the work through [`rayon::ThreadPool::install`].

use crate::{ModelError, Result};

/// A pool with this process's rayon threads divided by `sharers` (at least one thread).
pub fn pool_for_one_of(sharers: usize) -> Result<rayon::ThreadPool> {
    let threads = (rayon::current_num_threads() / sharers.max(1)).max(1);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("cm-core-share-{i}"))
        .build()
        .map_err(|e| {
            ModelError::Threads(format!(
                "cannot start a thread pool of {threads} threads (one of {sharers} sharing the cores): {e}"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cores_are_divided_and_every_sharer_gets_one() {
        let all = rayon::current_num_threads();
        assert_eq!(pool_for_one_of(1).unwrap().current_num_threads(), all);
        assert_eq!(
            pool_for_one_of(2).unwrap().current_num_threads(),
            (all / 2).max(1)
        );
        assert_eq!(pool_for_one_of(all * 4).unwrap().current_num_threads(), 1);
        assert_eq!(pool_for_one_of(0).unwrap().current_num_threads(), all);
    }

    #[test]
    fn work_installed_in_the_pool_runs_on_its_threads() {
        let pool = pool_for_one_of(usize::MAX).unwrap();
        let inside = pool.install(rayon::current_num_threads);
        assert_eq!(inside, 1);
        let name = pool.install(|| std::thread::current().name().map(str::to_owned));
        assert_eq!(name.as_deref(), Some("cm-core-share-0"));
    }
}

//! Thread tuning for libtorch work: how many intra-op threads a thread uses, and how
//! nice the training thread is, so that inference latency stays bounded while a job trains
//! (figures in `docs/benchmarks.md`).
//!
//! libtorch's intra-op thread count is per thread (OpenMP's `nthreads-var`) once a thread
//! has initialised it, which is what makes this work; see [`pin_intra_op_threads`].

/// libtorch's default intra-op thread count (one per physical core), read once per process:
/// later reads can see a training thread's lowered count, which libtorch hands on to threads
/// that have not chosen one (see [`pin_intra_op_threads`]).
pub fn default_intra_op_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| tch::get_num_threads().max(1) as usize)
}

/// Sets the calling thread's libtorch intra-op thread count so that it stays set: the first
/// parallel operation on a thread resets its count to the process-wide value, which any
/// thread's `set_num_threads` overwrites, so that first initialisation is forced here,
/// before the count is set (see the test `intra_op_threads_are_per_thread_once_initialised`).
pub fn pin_intra_op_threads(threads: usize) {
    let _ = tch::get_num_threads();
    tch::set_num_threads(threads.max(1) as i32);
}

/// Lowers the calling thread's share of the CPU: fewer libtorch intra-op threads, and a
/// nice value (clamped to 0..=19) that the threads it starts (data loaders, OpenMP workers)
/// inherit.
pub fn lower_priority(threads: usize, nice: i32) {
    pin_intra_op_threads(threads);
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscalls on this thread's own id.
        let rc = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice.clamp(0, 19))
        };
        if rc != 0 {
            tracing::warn!(
                "setpriority on the training thread: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What makes "fewer intra-op threads for training" work, and its trap. libtorch keeps
    /// the count per thread (OpenMP's nthreads-var), but also in one process-wide value that
    /// every `set_num_threads` overwrites, and a thread's first parallel operation (or
    /// `get_num_threads`) resets its own count to that value. A thread that sets its count
    /// before that first operation can lose it to another thread's later call;
    /// [`pin_intra_op_threads`] initialises first, and keeps it.
    #[test]
    fn intra_op_threads_are_per_thread_once_initialised() {
        use std::sync::mpsc::channel;
        let spawn = |n: i32, pin: bool| {
            let (set_tx, set_rx) = channel();
            let (go_tx, go_rx) = channel::<()>();
            let t = std::thread::spawn(move || {
                if pin {
                    pin_intra_op_threads(n as usize);
                } else {
                    tch::set_num_threads(n);
                }
                set_tx.send(()).unwrap();
                go_rx.recv().unwrap();
                tch::get_num_threads()
            });
            set_rx.recv().unwrap();
            (t, go_tx)
        };
        let (pinned, go_pinned) = spawn(3, true);
        let (naive, go_naive) = spawn(5, false);
        let (training, go_training) = spawn(1, true);
        for go in [go_training, go_pinned, go_naive] {
            go.send(()).unwrap();
        }
        assert_eq!(training.join().unwrap(), 1);
        assert_eq!(
            pinned.join().unwrap(),
            3,
            "the training thread's count leaked"
        );
        assert_eq!(
            naive.join().unwrap(),
            1,
            "an uninitialised thread takes the last count set anywhere"
        );
    }
}

//! Where sessions run: one single-threaded runtime per worker thread.
//!
//! A session's two sockets, its timers and its task then live on one
//! thread for the session's whole life. A work-stealing runtime moves a
//! woken task to whichever worker is free, and wakes parked workers to
//! steal it: with thousands of relaying sessions, those wake-ups and
//! cross-core moves cost more CPU than the relaying (pingora and HAProxy
//! pin a connection to one thread for the same reason).
//!
//! Each new session goes to the worker running the fewest sessions now.
//! Without workers (tests, embedding) sessions run on the caller's runtime.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::{Builder, Handle};

/// The session runtimes; the default has none.
#[derive(Default)]
pub struct Workers {
    workers: Vec<Worker>,
}

struct Worker {
    handle: Handle,
    /// Sessions spawned here and not yet ended.
    load: Arc<AtomicUsize>,
}

/// A session's place on its worker, counted until the session's future
/// drops it.
pub struct Seat(Option<Arc<AtomicUsize>>);

impl Drop for Seat {
    fn drop(&mut self) {
        if let Some(load) = &self.0 {
            load.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Workers {
    /// Starts `count` worker threads, each running its own runtime until
    /// the process exits.
    pub fn start(count: usize) -> std::io::Result<Workers> {
        let workers = (0..count)
            .map(|i| {
                let runtime = Builder::new_current_thread()
                    .enable_all()
                    .thread_name(format!("rtmp-guard-w{i}"))
                    .build()?;
                let handle = runtime.handle().clone();
                std::thread::Builder::new()
                    .name(format!("rtmp-guard-w{i}"))
                    .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
                Ok(Worker {
                    handle,
                    load: Arc::default(),
                })
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Workers { workers })
    }

    /// One worker per CPU the process may run on.
    pub fn per_cpu() -> std::io::Result<Workers> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Workers::start(cpus)
    }

    /// Runs a session on the least loaded worker, or on the current
    /// runtime without workers. Sockets the session registers once it runs
    /// belong to that worker's reactor.
    ///
    /// `session` gets the session's [`Seat`] to keep: wrapping its future
    /// in another one here would keep room for it twice.
    pub fn spawn<F>(&self, session: impl FnOnce(Seat) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Some(worker) = self
            .workers
            .iter()
            .min_by_key(|w| w.load.load(Ordering::Relaxed))
        else {
            tokio::spawn(session(Seat(None)));
            return;
        };
        worker.load.fetch_add(1, Ordering::Relaxed);
        worker
            .handle
            .spawn(session(Seat(Some(worker.load.clone()))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_goes_to_the_least_loaded_worker_and_leaves_it_when_done() {
        let workers = Workers::start(2).unwrap();
        let load = |i: usize| workers.workers[i].load.load(Ordering::Relaxed);
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let stop_rx = Arc::new(std::sync::Mutex::new(stop_rx));
        let (name_tx, name_rx) = std::sync::mpsc::channel();
        for _ in 0..2 {
            let (names, stop) = (name_tx.clone(), stop_rx.clone());
            workers.spawn(|seat| async move {
                let _seat = seat;
                let name = std::thread::current().name().map(str::to_owned);
                names.send(name).unwrap();
                // Held until the test lets it go (blocking its worker is
                // fine here: nothing else runs on it).
                let _ = stop.lock().unwrap().recv();
            });
        }
        let ran_on: Vec<_> = (0..2).map(|_| name_rx.recv().unwrap()).collect();
        assert_eq!(load(0) + load(1), 2);
        assert_eq!((load(0), load(1)), (1, 1), "one each");
        let mut names: Vec<_> = ran_on.into_iter().flatten().collect();
        names.sort();
        assert_eq!(names, ["rtmp-guard-w0", "rtmp-guard-w1"]);
        drop(stop_tx);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while load(0) + load(1) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(
            load(0) + load(1),
            0,
            "each seat freed when its session ended"
        );
    }
}

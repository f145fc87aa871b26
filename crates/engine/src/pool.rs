//! The thread pool's queue and bookkeeping. The worker threads themselves are started by
//! the caller (the binding makes them real `threading.Thread`s) and run `next_job` in a
//! loop. Invariants: jobs run in submission order of dequeue; after `shutdown` no job is
//! accepted; every worker that was started receives exactly one exit signal.

use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering::SeqCst};

use crossbeam_channel::{unbounded, Receiver, Sender, TryRecvError};

enum Msg<J> {
    /// A job, and whether its submit claimed an idle worker for it (see `next_job`).
    Job(J, bool),
    Exit,
}

/// What `submit` asks of its caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Queued; a worker will pick it up.
    Queued,
    /// Queued, and the caller must start one more worker (a slot was reserved for it).
    SpawnWorker,
}

/// A job queue with the stdlib pool's spawning policy: a new worker is started when no
/// worker is idle and fewer than `max_workers` exist.
pub struct Pool<J> {
    tx: Sender<Msg<J>>,
    rx: Receiver<Msg<J>>,
    max_workers: usize,
    workers: AtomicUsize,
    /// Workers counted idle that no claimed job has gone to yet, less the claimed jobs
    /// still queued (see `next_job`); a submit claims one while it is above 0. It may
    /// dip below 0 for a moment: a counted worker took a job queued unclaimed while a
    /// claimed one waits behind it.
    idle: AtomicIsize,
    shut_down: AtomicBool,
}

impl<J: Send> Pool<J> {
    pub fn new(max_workers: usize) -> Self {
        assert!(max_workers > 0, "max_workers must be greater than 0");
        let (tx, rx) = unbounded();
        Pool {
            tx,
            rx,
            max_workers,
            workers: AtomicUsize::new(0),
            idle: AtomicIsize::new(0),
            shut_down: AtomicBool::new(false),
        }
    }

    pub fn max_workers(&self) -> usize {
        self.max_workers
    }

    /// Workers started (or reserved) so far.
    pub fn workers(&self) -> usize {
        self.workers.load(SeqCst)
    }

    pub fn is_shut_down(&self) -> bool {
        self.shut_down.load(SeqCst)
    }

    /// Jobs queued and not yet taken by a worker.
    pub fn pending(&self) -> usize {
        self.rx.len()
    }

    /// Queues `job`; gives it back after shutdown.
    pub fn submit(&self, job: J) -> Result<Submitted, J> {
        if self.shut_down.load(SeqCst) {
            return Err(job);
        }
        // Claim an idle worker for this job, as the stdlib claims its idle semaphore.
        let claimed = self
            .idle
            .fetch_update(SeqCst, SeqCst, |n| (n > 0).then_some(n - 1))
            .is_ok();
        if let Err(e) = self.tx.send(Msg::Job(job, claimed)) {
            if claimed {
                self.idle.fetch_add(1, SeqCst);
            }
            match e.0 {
                Msg::Job(j, _) => return Err(j),
                Msg::Exit => unreachable!("submit only sends jobs"),
            }
        }
        if claimed {
            return Ok(Submitted::Queued);
        }
        let reserved = self
            .workers
            .fetch_update(SeqCst, SeqCst, |n| (n < self.max_workers).then_some(n + 1))
            .is_ok();
        Ok(if reserved {
            Submitted::SpawnWorker
        } else {
            Submitted::Queued
        })
    }

    /// Undo a reservation made by `submit` when the worker could not be started.
    pub fn worker_failed_to_start(&self) {
        self.workers.fetch_sub(1, SeqCst);
    }

    /// Worker side, done with a job and still holding the interpreter lock: counts
    /// itself idle now if nothing is queued, as the stdlib's worker releases its idle
    /// semaphore before it lets go of the GIL. Counted later (in `next_job`), a submitter
    /// that the finished job woke could find no worker idle and start another: sequential
    /// `submit().result()` calls grew the pool towards `max_workers`. Returns whether it
    /// counted; pass that to `next_job`.
    pub fn idle_soon(&self) -> bool {
        if self.rx.is_empty() {
            self.idle.fetch_add(1, SeqCst);
            true
        } else {
            false
        }
    }

    /// Worker side: the next job, blocking while the queue is empty; None means exit.
    /// Call it without holding any interpreter lock. `counted_idle`: `idle_soon` counted
    /// this worker idle already.
    ///
    /// The idle count stays exact when the job taken is not the one the count meant:
    /// a claimed job taken by a worker that was not counted (busy until just now: its
    /// done callbacks let go of the GIL, and the submit they woke claimed another,
    /// waiting worker) leaves that other worker idle, so the claim is given back; an
    /// unclaimed job taken by a counted worker uncounts it. Without that the count
    /// drifted down by one each time, until every submit started a worker, up to
    /// `max_workers` (or up, leaving a job queued behind a worker thought idle).
    pub fn next_job(&self, counted_idle: bool) -> Option<J> {
        let (msg, counted) = if counted_idle {
            match self.rx.recv() {
                Ok(m) => (m, true),
                Err(_) => return None,
            }
        } else {
            match self.rx.try_recv() {
                Ok(m) => (m, false),
                Err(TryRecvError::Empty) => {
                    self.idle.fetch_add(1, SeqCst);
                    match self.rx.recv() {
                        Ok(m) => (m, true),
                        Err(_) => return None,
                    }
                }
                Err(TryRecvError::Disconnected) => return None,
            }
        };
        match msg {
            Msg::Job(j, claimed) => {
                match (counted, claimed) {
                    (false, true) => {
                        self.idle.fetch_add(1, SeqCst);
                    }
                    (true, false) => {
                        self.idle.fetch_sub(1, SeqCst);
                    }
                    _ => {}
                }
                Some(j)
            }
            Msg::Exit => {
                // Passed on, so that a worker the count missed (one whose start was
                // reported failed though its thread runs) still gets one.
                let _ = self.tx.send(Msg::Exit);
                None
            }
        }
    }

    /// Refuses further jobs; returns the queued jobs if `cancel_pending` (they will not
    /// run), and tells every started worker to exit once the queue ahead of it is done.
    pub fn shutdown(&self, cancel_pending: bool) -> Vec<J> {
        let first = !self.shut_down.swap(true, SeqCst);
        let mut cancelled = Vec::new();
        if cancel_pending {
            let mut exits = 0;
            while let Ok(m) = self.rx.try_recv() {
                match m {
                    Msg::Job(j, _) => cancelled.push(j),
                    Msg::Exit => exits += 1,
                }
            }
            for _ in 0..exits {
                let _ = self.tx.send(Msg::Exit);
            }
        }
        if first {
            // One per counted worker, so they exit together; at least one, which each
            // worker passes on (see `next_job`), for any worker the count missed.
            for _ in 0..self.workers.load(SeqCst).max(1) {
                let _ = self.tx.send(Msg::Exit);
            }
        }
        cancelled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn spawns_up_to_max_then_queues() {
        let pool = Pool::new(2);
        assert_eq!(pool.submit(1), Ok(Submitted::SpawnWorker));
        assert_eq!(pool.submit(2), Ok(Submitted::SpawnWorker));
        assert_eq!(pool.submit(3), Ok(Submitted::Queued));
        assert_eq!(pool.workers(), 2);
        assert_eq!(pool.pending(), 3);
    }

    #[test]
    fn workers_drain_then_exit_after_shutdown() {
        let pool = Arc::new(Pool::new(3));
        let mut spawned = 0;
        for i in 0..100u32 {
            if pool.submit(i).unwrap() == Submitted::SpawnWorker {
                spawned += 1;
            }
        }
        let threads: Vec<_> = (0..spawned)
            .map(|_| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    while let Some(j) = pool.next_job(false) {
                        got.push(j);
                    }
                    got
                })
            })
            .collect();
        assert!(pool.shutdown(false).is_empty());
        let mut all: Vec<u32> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_eq!(pool.submit(5), Err(5), "no jobs after shutdown");
    }

    #[test]
    fn a_worker_the_count_missed_still_exits_after_shutdown() {
        // A start reported failed (interrupted) though its thread runs: the pool counts
        // no worker at all, and the one there is must still exit.
        let pool = Arc::new(Pool::new(2));
        assert_eq!(pool.submit(1), Ok(Submitted::SpawnWorker));
        pool.worker_failed_to_start();
        let threads: Vec<_> = (0..1)
            .map(|_| {
                let pool = pool.clone();
                std::thread::spawn(move || while pool.next_job(false).is_some() {})
            })
            .collect();
        drop(pool.shutdown(false));
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn a_worker_counted_idle_before_waiting_is_claimed_by_the_next_submit() {
        let pool = Pool::new(4);
        assert_eq!(pool.submit(1), Ok(Submitted::SpawnWorker));
        assert_eq!(pool.next_job(false), Some(1));
        // Done with job 1, not yet waiting: a submit now must not start a second worker.
        assert!(pool.idle_soon());
        assert_eq!(pool.submit(2), Ok(Submitted::Queued));
        assert_eq!(pool.next_job(true), Some(2));
        assert_eq!(pool.workers(), 1);
        // With a job queued already, the worker is not counted idle.
        pool.submit(3).unwrap();
        pool.submit(4).unwrap();
        assert!(!pool.idle_soon());
    }

    #[test]
    fn a_claimed_job_a_busy_worker_takes_leaves_the_waiting_worker_counted_idle() {
        // Worker A runs job 1; worker B ran job 2 and waits, counted idle.
        let pool = Pool::new(4);
        assert_eq!(pool.submit(1), Ok(Submitted::SpawnWorker));
        assert_eq!(pool.next_job(false), Some(1));
        assert_eq!(pool.submit(2), Ok(Submitted::SpawnWorker));
        assert_eq!(pool.next_job(false), Some(2));
        assert!(pool.idle_soon());
        // A's done callbacks let go of the GIL; the submit they woke claims B.
        assert_eq!(pool.submit(3), Ok(Submitted::Queued));
        // A, done, finds job 3 queued and takes it: B is still idle, and the next
        // submit goes to it instead of starting a third worker.
        assert!(!pool.idle_soon());
        assert_eq!(pool.next_job(false), Some(3));
        assert_eq!(pool.submit(4), Ok(Submitted::Queued));
        assert_eq!(pool.next_job(true), Some(4));
        assert!(pool.idle_soon());
        assert_eq!(pool.submit(5), Ok(Submitted::Queued));
        assert_eq!(pool.workers(), 2);
    }

    #[test]
    fn an_unclaimed_job_a_counted_worker_takes_uncounts_it() {
        // Submitted while no worker was counted idle (the pool full), taken by a worker
        // that counted itself meanwhile: that worker is busy, not idle.
        let pool = Pool::new(1);
        assert_eq!(pool.submit(1), Ok(Submitted::SpawnWorker));
        assert_eq!(pool.next_job(false), Some(1));
        assert_eq!(pool.submit(2), Ok(Submitted::Queued));
        // (As if the worker had counted itself just before job 2 arrived.)
        pool.idle.fetch_add(1, SeqCst);
        assert_eq!(pool.next_job(true), Some(2));
        assert_eq!(pool.idle.load(SeqCst), 0);
    }

    #[test]
    fn shutdown_with_cancel_returns_queued_jobs() {
        let pool = Pool::new(1);
        for i in 0..5 {
            pool.submit(i).unwrap();
        }
        let cancelled = pool.shutdown(true);
        assert_eq!(cancelled, vec![0, 1, 2, 3, 4]);
        assert_eq!(pool.next_job(false), None, "the worker is told to exit");
    }
}

//! The one thread that owns the model. Requests become [`Job`]s on a bounded queue; the thread
//! takes a job, gathers whatever else is already waiting (up to `max_batch` slices), runs them as
//! one batch and answers each job on its own reply. A lone request on an idle model runs at once;
//! `max_delay` only applies while work is arriving faster than the model (then a short wait fills
//! the batch). A full queue is refused at once, never awaited, and a job past its deadline, or
//! whose requester has gone, is dropped unrun.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use ndarray::{Array4, ArrayView4, Axis, concatenate, s};

/// A model as the batcher sees it: model inputs `(N,C,S,S)` → probabilities `(N,K,S,S)`.
pub trait Model {
    /// Channels and side of one input.
    fn input_shape(&self) -> (usize, usize);
    fn infer(&mut self, batch: ArrayView4<'_, f32>) -> Result<Array4<f32>, String>;
}

/// Where a job's answer goes.
pub trait Reply: Send {
    /// The requester has gone (timed out or disconnected): the job need not run.
    fn is_closed(&self) -> bool;
    fn send(self: Box<Self>, result: Result<Inferred, JobError>);
}

/// One request's slices for the model.
pub struct Job {
    /// Model inputs `(n,C,S,S)`.
    pub inputs: Array4<f32>,
    pub deadline: Instant,
    pub reply: Box<dyn Reply>,
}

/// A job's answer.
#[derive(Debug, Clone)]
pub struct Inferred {
    /// Probabilities `(n,K,S,S)`.
    pub probabilities: Array4<f32>,
    /// Time from submission to the start of its batch.
    pub queue_seconds: f64,
    /// Time the batch took in the model.
    pub infer_seconds: f64,
    /// Slices in the batch this job ran in.
    pub batch_slices: usize,
    /// Whether this job was the first of its batch (count batch sizes once per batch).
    pub first_in_batch: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("the request waited past its deadline")]
    Expired,
    #[error("the model failed: {0}")]
    Failed(String),
}

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("the queue is full")]
    Full,
    #[error("the server is shutting down")]
    Closed,
}

/// Queue and batching settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most slices per forward pass.
    pub max_batch: usize,
    /// Longest wait to fill a batch while requests are arriving.
    pub max_delay: Duration,
    /// Most jobs waiting.
    pub queue: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch: 4,
            max_delay: Duration::from_millis(5),
            queue: 8,
        }
    }
}

struct Queued {
    job: Job,
    submitted: Instant,
}

/// The model thread and its queue.
pub struct Batcher {
    tx: Mutex<Option<Sender<Queued>>>,
    depth: Arc<AtomicUsize>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Batcher {
    /// Starts the model thread: it runs `load`, then one warm-up inference on a zero slice, tells
    /// `ready` how that went, and then serves the queue until [`Batcher::close`].
    pub fn start<L, R>(config: BatchConfig, load: L, ready: R) -> Self
    where
        L: FnOnce() -> Result<Box<dyn Model>, String> + Send + 'static,
        R: FnOnce(Result<(), String>) + Send + 'static,
    {
        let (tx, rx) = crossbeam_channel::bounded::<Queued>(config.queue.max(1));
        let depth = Arc::new(AtomicUsize::new(0));
        let thread_depth = Arc::clone(&depth);
        let thread = std::thread::Builder::new()
            .name("covseg-model".into())
            .spawn(move || {
                let warmed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    load().and_then(|mut model| {
                        let (c, side) = model.input_shape();
                        model.infer(Array4::zeros((1, c, side, side)).view())?;
                        Ok(model)
                    })
                }))
                .unwrap_or_else(|panic| Err(panic_message(&*panic)));
                match warmed {
                    Ok(mut model) => {
                        ready(Ok(()));
                        serve(&mut *model, &rx, &thread_depth, config);
                    }
                    Err(e) => {
                        ready(Err(e.clone()));
                        // Answer whatever arrives, so no requester waits for a model that never came.
                        for q in rx.iter() {
                            thread_depth.fetch_sub(1, Ordering::SeqCst);
                            q.job.reply.send(Err(JobError::Failed(e.clone())));
                        }
                    }
                }
            })
            .expect("spawning the model thread");
        Self {
            tx: Mutex::new(Some(tx)),
            depth,
            thread: Mutex::new(Some(thread)),
        }
    }

    /// Queues a job, or refuses it at once (the job is dropped; its reply is never called).
    pub fn submit(&self, job: Job) -> Result<(), Rejected> {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(tx) = tx else {
            return Err(Rejected::Closed);
        };
        self.depth.fetch_add(1, Ordering::SeqCst);
        let queued = Queued {
            job,
            submitted: Instant::now(),
        };
        tx.try_send(queued).map_err(|e| {
            self.depth.fetch_sub(1, Ordering::SeqCst);
            match e {
                TrySendError::Full(_) => Rejected::Full,
                TrySendError::Disconnected(_) => Rejected::Closed,
            }
        })
    }

    /// Jobs waiting (not yet in a batch).
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }

    /// Stops taking jobs, lets the thread finish every queued one, and waits for it.
    pub fn close(&self) {
        self.close_within(Duration::MAX);
    }

    /// As [`Batcher::close`], waiting at most `limit`; whether the thread finished. A thread
    /// still loading or in a long batch is left to end with the process.
    pub fn close_within(&self, limit: Duration) -> bool {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let deadline = Instant::now().checked_add(limit);
        let mut slot = self.thread.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match slot.as_ref() {
                None => return true,
                Some(t) if t.is_finished() => {
                    let _ = slot.take().expect("checked").join();
                    return true;
                }
                Some(_) if deadline.is_some_and(|d| Instant::now() >= d) => return false,
                Some(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.close();
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown cause".to_owned());
    format!("the model panicked: {text}")
}

fn slices(q: &Queued) -> usize {
    q.job.inputs.dim().0
}

fn serve(model: &mut dyn Model, rx: &Receiver<Queued>, depth: &AtomicUsize, config: BatchConfig) {
    let max = config.max_batch.max(1);
    let mut carried: Option<Queued> = None;
    loop {
        let first = match carried.take() {
            Some(q) => q,
            None => match rx.recv() {
                Ok(q) => {
                    depth.fetch_sub(1, Ordering::SeqCst);
                    q
                }
                Err(_) => return,
            },
        };
        let mut batch = vec![first];
        let mut total = slices(&batch[0]);
        // What is already waiting joins at once; only then, and only if something was waiting
        // (the model is busy, not idle), wait up to max_delay for more.
        let mut waited = false;
        let gather_until = Instant::now() + config.max_delay;
        while total < max {
            let next = match rx.try_recv() {
                Ok(q) => Some(q),
                Err(_) if batch.len() > 1 && !waited && !config.max_delay.is_zero() => {
                    waited = true;
                    rx.recv_deadline(gather_until).ok()
                }
                Err(_) => None,
            };
            let Some(q) = next else { break };
            depth.fetch_sub(1, Ordering::SeqCst);
            if total + slices(&q) > max {
                carried = Some(q);
                break;
            }
            total += slices(&q);
            batch.push(q);
        }
        run(model, batch);
    }
}

fn run(model: &mut dyn Model, batch: Vec<Queued>) {
    let now = Instant::now();
    let (live, dropped): (Vec<Queued>, Vec<Queued>) = batch
        .into_iter()
        .partition(|q| q.job.deadline > now && !q.job.reply.is_closed());
    for q in dropped {
        q.job.reply.send(Err(JobError::Expired));
    }
    if live.is_empty() {
        return;
    }
    let inputs: Vec<ArrayView4<'_, f32>> = live.iter().map(|q| q.job.inputs.view()).collect();
    let stacked = if inputs.len() == 1 {
        None
    } else {
        Some(concatenate(Axis(0), &inputs).expect("inputs of one model's shape"))
    };
    let total = live.iter().map(slices).sum::<usize>();
    let started = Instant::now();
    // A panicking model (a GPU out of memory, a lost device) fails this batch, not the thread:
    // the thread is the only one that can answer the queue.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &stacked {
        Some(x) => model.infer(x.view()),
        None => model.infer(live[0].job.inputs.view()),
    }))
    .unwrap_or_else(|panic| Err(panic_message(&*panic)));
    let infer_seconds = started.elapsed().as_secs_f64();
    match result {
        Ok(p) => {
            let mut at = 0;
            for (i, q) in live.into_iter().enumerate() {
                let n = slices(&q);
                let answer = Inferred {
                    probabilities: p.slice(s![at..at + n, .., .., ..]).to_owned(),
                    queue_seconds: started.duration_since(q.submitted).as_secs_f64(),
                    infer_seconds,
                    batch_slices: total,
                    first_in_batch: i == 0,
                };
                at += n;
                q.job.reply.send(Ok(answer));
            }
        }
        Err(e) => {
            for q in live {
                q.job.reply.send(Err(JobError::Failed(e.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Doubles its input after sleeping; records each batch's size.
    struct Slow {
        delay: Duration,
        batches: Arc<Mutex<Vec<usize>>>,
    }

    impl Model for Slow {
        fn input_shape(&self) -> (usize, usize) {
            (1, 2)
        }
        fn infer(&mut self, batch: ArrayView4<'_, f32>) -> Result<Array4<f32>, String> {
            std::thread::sleep(self.delay);
            self.batches.lock().unwrap().push(batch.dim().0);
            Ok(batch.mapv(|v| v * 2.0))
        }
    }

    struct Channel(crossbeam_channel::Sender<Result<Inferred, JobError>>);

    impl Reply for Channel {
        fn is_closed(&self) -> bool {
            false
        }
        fn send(self: Box<Self>, result: Result<Inferred, JobError>) {
            let _ = self.0.send(result);
        }
    }

    fn start(delay: Duration, config: BatchConfig) -> (Batcher, Arc<Mutex<Vec<usize>>>) {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let b = Arc::clone(&batches);
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let batcher = Batcher::start(
            config,
            move || Ok(Box::new(Slow { delay, batches: b }) as Box<dyn Model>),
            move |r| ready_tx.send(r).unwrap(),
        );
        ready_rx.recv().unwrap().unwrap();
        batches.lock().unwrap().clear();
        (batcher, batches)
    }

    fn job(
        value: f32,
        timeout: Duration,
    ) -> (Job, crossbeam_channel::Receiver<Result<Inferred, JobError>>) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        (
            Job {
                inputs: Array4::from_elem((1, 1, 2, 2), value),
                deadline: Instant::now() + timeout,
                reply: Box::new(Channel(tx)),
            },
            rx,
        )
    }

    #[test]
    fn a_lone_job_runs_at_once_and_gets_its_own_answer() {
        let (batcher, batches) = start(
            Duration::ZERO,
            BatchConfig {
                max_delay: Duration::from_secs(5),
                ..Default::default()
            },
        );
        let started = Instant::now();
        let (j, rx) = job(3.0, Duration::from_secs(10));
        batcher.submit(j).unwrap();
        let answer = rx.recv().unwrap().unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "an idle model waited"
        );
        assert_eq!(answer.probabilities[(0, 0, 1, 1)], 6.0);
        assert_eq!(*batches.lock().unwrap(), vec![1]);
    }

    #[test]
    fn waiting_jobs_are_batched_each_answered_with_its_own_slices() {
        let (batcher, batches) = start(Duration::from_millis(600), BatchConfig::default());
        let mut answers = Vec::new();
        for i in 0..5 {
            let (j, rx) = job(i as f32, Duration::from_secs(10));
            batcher.submit(j).unwrap();
            answers.push(rx);
            if i == 0 {
                std::thread::sleep(Duration::from_millis(150));
            }
        }
        for (i, rx) in answers.into_iter().enumerate() {
            let a = rx.recv().unwrap().unwrap();
            assert_eq!(a.probabilities[(0, 0, 0, 0)], 2.0 * i as f32);
        }
        // The first ran alone; the four that queued behind it ran as one batch.
        assert_eq!(*batches.lock().unwrap(), vec![1, 4]);
    }

    #[test]
    fn a_full_queue_refuses_at_once_and_close_drains_the_queue() {
        let (batcher, _) = start(
            Duration::from_millis(800),
            BatchConfig {
                max_batch: 1,
                queue: 2,
                ..Default::default()
            },
        );
        let mut queued = Vec::new();
        let (j, rx) = job(1.0, Duration::from_secs(10));
        batcher.submit(j).unwrap();
        queued.push(rx);
        std::thread::sleep(Duration::from_millis(150)); // the first is in the model now
        for _ in 0..2 {
            let (j, rx) = job(1.0, Duration::from_secs(10));
            batcher.submit(j).unwrap();
            queued.push(rx);
        }
        assert_eq!(batcher.depth(), 2);
        let started = Instant::now();
        let (j, _) = job(1.0, Duration::from_secs(10));
        let refused = batcher.submit(j).map(|_| ());
        assert_eq!(refused, Err(Rejected::Full));
        assert!(started.elapsed() < Duration::from_millis(200));
        batcher.close();
        for rx in queued {
            assert!(
                rx.try_recv().unwrap().is_ok(),
                "a queued job was not finished"
            );
        }
        let (j, _) = job(1.0, Duration::from_secs(10));
        assert_eq!(batcher.submit(j).map(|_| ()), Err(Rejected::Closed));
    }

    #[test]
    fn expired_jobs_are_dropped_unrun() {
        let (batcher, batches) = start(
            Duration::from_millis(200),
            BatchConfig {
                max_batch: 1,
                ..Default::default()
            },
        );
        let (a, ra) = job(1.0, Duration::from_secs(10));
        let (b, rb) = job(1.0, Duration::from_millis(50));
        batcher.submit(a).unwrap();
        batcher.submit(b).unwrap();
        assert!(ra.recv().unwrap().is_ok());
        assert_eq!(rb.recv().unwrap().unwrap_err(), JobError::Expired);
        assert_eq!(*batches.lock().unwrap(), vec![1]);
    }
}

//! The request scheduler: one thread owns the model and decodes every admitted request's
//! current block in one batched forward pass per step. Requests wait in a bounded queue,
//! join the batch between steps and leave it when they finish, time out, or their client
//! goes away.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use llada::{step_batch, Generation, LoadedModel, TextStream};

use crate::api::{FinishReason, Usage};
use crate::error::ApiError;
use crate::metrics::{Metrics, OutcomeLabels};
use crate::stop::StopMatcher;

/// One admitted request.
pub struct Job {
    pub generation: Generation,
    pub stop: Vec<String>,
    pub received: Instant,
    pub deadline: Instant,
    pub events: UnboundedSender<Event>,
}

/// What a request's handler hears back, in order: text pieces, then one `Done` or
/// `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Final text, left-contiguous: it will never change.
    Text(String),
    Done {
        reason: FinishReason,
        usage: Usage,
        timing: Timing,
    },
    Failed(ApiError),
}

/// When a finished request's work happened, for APIs that report durations (Ollama's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Queued.
    pub received: Instant,
    /// Joined the batch.
    pub admitted: Instant,
    /// Its first denoising pass ended: the prompt is in the cache (a prompt is committed
    /// in that pass or in commit-only passes before it) and the answer's first block has
    /// had a step, the diffusion counterpart of an autoregressive model's prompt
    /// evaluation.
    pub prefilled: Instant,
    pub finished: Instant,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    Full,
    Stopped,
}

/// The handlers' side of the scheduler.
pub struct Scheduler {
    jobs: SyncSender<Job>,
    queued: Arc<AtomicUsize>,
    running: Arc<AtomicBool>,
    max_queue: usize,
    metrics: Arc<Metrics>,
}

impl Scheduler {
    /// Starts the decoding thread; it stops when the last `Scheduler` handle is dropped
    /// and its work is done.
    pub fn start(
        model: Arc<LoadedModel>,
        max_batch: usize,
        max_queue: usize,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let (jobs, inbox) = mpsc::sync_channel(max_queue.max(1));
        let queued = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(AtomicBool::new(true));
        let worker = Worker {
            model,
            max_batch: max_batch.max(1),
            inbox,
            queued: queued.clone(),
            metrics: metrics.clone(),
        };
        let alive = Alive(running.clone());
        std::thread::Builder::new()
            .name("llada-scheduler".into())
            .spawn(move || {
                let _alive = alive;
                worker.run()
            })?;
        Ok(Self {
            jobs,
            queued,
            running,
            max_queue: max_queue.max(1),
            metrics,
        })
    }

    /// False once the decoding thread has ended (it panicked outside a forward pass).
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    pub fn max_queue(&self) -> usize {
        self.max_queue
    }

    /// Queues `job`, or says why not, at once (never waits for room).
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        self.queued.fetch_add(1, Ordering::SeqCst);
        match self.jobs.try_send(job) {
            Ok(()) => {
                self.metrics.queue_depth.set(self.queued() as i64);
                Ok(())
            }
            Err(e) => {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::Full,
                    TrySendError::Disconnected(_) => SubmitError::Stopped,
                })
            }
        }
    }
}

/// Clears the running flag when the decoding thread ends, however it ends.
struct Alive(Arc<AtomicBool>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

struct Worker {
    model: Arc<LoadedModel>,
    max_batch: usize,
    inbox: Receiver<Job>,
    queued: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

/// A request in the batch, with its detokenizer and stop-sequence state.
struct Active<'t> {
    job: Job,
    text: TextStream<'t>,
    stop: StopMatcher,
    first_text: bool,
    admitted: Instant,
    prefilled: Option<Instant>,
}

impl Worker {
    fn run(self) {
        let model = self.model.clone();
        let Some(tokenizer) = model.tokenizer.as_ref() else {
            tracing::error!("the scheduler needs the model's tokenizer");
            return;
        };
        let mut active: Vec<Active<'_>> = Vec::new();
        loop {
            self.metrics.active.set(active.len() as i64);
            if !self.admit(&mut active, tokenizer) {
                return;
            }
            self.drop_gone(&mut active);
            if active.is_empty() {
                continue;
            }
            self.step(&mut active);
        }
    }

    /// Moves queued jobs into the batch while there is room; waits when idle. False once
    /// every handle is gone and nothing is left to do.
    fn admit<'t>(&self, active: &mut Vec<Active<'t>>, tokenizer: &'t llada::Tokenizer) -> bool {
        while active.len() < self.max_batch {
            let job = if active.is_empty() {
                match self.inbox.recv() {
                    Ok(job) => job,
                    Err(_) => return false,
                }
            } else {
                match self.inbox.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            };
            self.queued.fetch_sub(1, Ordering::SeqCst);
            self.metrics
                .queue_depth
                .set(self.queued.load(Ordering::SeqCst) as i64);
            // Requests that ended while queued take no slot.
            if let Some(outcome) = Self::gone(&job, Instant::now()) {
                self.count(outcome);
                continue;
            }
            self.metrics
                .prompt_tokens
                .inc_by(job.generation.stats().prompt_tokens as u64);
            let stop = StopMatcher::new(job.stop.clone());
            active.push(Active {
                job,
                text: tokenizer.stream_decoder(true),
                stop,
                first_text: true,
                admitted: Instant::now(),
                prefilled: None,
            });
        }
        self.metrics.active.set(active.len() as i64);
        true
    }

    /// Frees the slots of requests whose client left or whose time ran out.
    fn drop_gone(&self, active: &mut Vec<Active<'_>>) {
        let now = Instant::now();
        active.retain(|a| match Self::gone(&a.job, now) {
            None => true,
            Some(outcome) => {
                self.count(outcome);
                // Generated tokens count toward throughput even when nobody reads them.
                self.metrics
                    .completion_tokens
                    .inc_by(a.text.token_count() as u64);
                false
            }
        });
    }

    /// Why `job` should stop now, if it should: its time ran out (checked first: the
    /// handler gives up at the same deadline and may already have left), or its client
    /// went away. A timed-out client still listening is told so.
    fn gone(job: &Job, now: Instant) -> Option<&'static str> {
        if now >= job.deadline {
            let limit = job.deadline.saturating_duration_since(job.received);
            let _ = job
                .events
                .send(Event::Failed(ApiError::timeout(limit.as_secs_f64())));
            Some("timeout")
        } else if job.events.is_closed() {
            Some("cancelled")
        } else {
            None
        }
    }

    fn count(&self, outcome: &'static str) {
        self.metrics
            .generations
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// One batched forward pass over every active request, then their new text out.
    fn step(&self, active: &mut Vec<Active<'_>>) {
        let model = &self.model.model;
        let mut commits: Vec<Vec<u32>> = vec![Vec::new(); active.len()];
        let result = {
            let mut batch: Vec<&mut Generation> =
                active.iter_mut().map(|a| &mut a.job.generation).collect();
            // A failing pass must not take the server down: the requests in it fail (all
            // active ones), the queue goes on.
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                step_batch(model, &mut batch, &mut |i, ids| {
                    commits[i].extend_from_slice(ids)
                })
            }))
        };
        let members = match result {
            Ok(Ok(members)) => members,
            Ok(Err(e)) => return self.fail_all(active, e.to_string()),
            Err(_) => return self.fail_all(active, "the forward pass panicked".into()),
        };
        if members > 0 {
            self.metrics.forwards.inc();
            self.metrics.sequence_forwards.inc_by(members as u64);
            self.metrics.batch_size.observe(members as f64);
        }
        let now = Instant::now();
        let mut i = 0;
        active.retain_mut(|a| {
            let ids = std::mem::take(&mut commits[i]);
            i += 1;
            if a.prefilled.is_none() && a.job.generation.stats().denoising_steps > 0 {
                a.prefilled = Some(now);
            }
            !self.emit(a, &ids)
        });
        self.metrics.refresh_tpf();
    }

    /// Sends `a`'s new text; true when the request is finished (and told so).
    fn emit(&self, a: &mut Active<'_>, ids: &[u32]) -> bool {
        let text = match a.text.push(ids) {
            Ok(text) => text,
            Err(e) => return self.fail(a, ApiError::internal(e.to_string())),
        };
        let released = a.stop.push(&text);
        self.send_text(a, released.text);
        if released.stopped {
            return self.finish(a, FinishReason::Stop);
        }
        // With eos_early_stop (the server's default) the answer ends once its stop token
        // is final; without it the block is decoded to its end, as the reference does.
        let generation = &a.job.generation;
        let ended = if generation.params().eos_early_stop {
            generation.answer_is_final()
        } else {
            generation.is_finished()
        };
        if ended {
            let rest = a.stop.flush();
            self.send_text(a, rest);
            let ended_by_stop = a
                .text
                .last_token()
                .is_some_and(|t| a.job.generation.params().is_stop(t));
            let reason = if ended_by_stop {
                FinishReason::Stop
            } else {
                FinishReason::Length
            };
            return self.finish(a, reason);
        }
        false
    }

    fn send_text(&self, a: &mut Active<'_>, text: String) {
        if text.is_empty() {
            return;
        }
        if a.first_text {
            a.first_text = false;
            self.metrics
                .time_to_first_token
                .observe(a.job.received.elapsed().as_secs_f64());
        }
        let _ = a.job.events.send(Event::Text(text));
    }

    fn finish(&self, a: &mut Active<'_>, reason: FinishReason) -> bool {
        let stats = a.job.generation.stats();
        let completion = a.text.token_count();
        let usage = Usage {
            prompt_tokens: stats.prompt_tokens,
            completion_tokens: completion,
            total_tokens: stats.prompt_tokens + completion,
            forwards: stats.forwards,
            edits: stats.edits,
            deletes: stats.deletes,
            splits: stats.splits,
        };
        self.metrics.completion_tokens.inc_by(completion as u64);
        self.metrics
            .generation_seconds
            .observe(a.job.received.elapsed().as_secs_f64());
        self.count(match reason {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        });
        let finished = Instant::now();
        let timing = Timing {
            received: a.job.received,
            admitted: a.admitted,
            prefilled: a.prefilled.unwrap_or(finished),
            finished,
        };
        let _ = a.job.events.send(Event::Done {
            reason,
            usage,
            timing,
        });
        true
    }

    fn fail(&self, a: &mut Active<'_>, error: ApiError) -> bool {
        tracing::error!("request failed: {}", error.message);
        self.count("error");
        let _ = a.job.events.send(Event::Failed(error));
        true
    }

    fn fail_all(&self, active: &mut Vec<Active<'_>>, message: String) {
        for mut a in active.drain(..) {
            self.fail(&mut a, ApiError::internal(message.clone()));
        }
    }
}

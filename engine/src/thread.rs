//! `EngineThread`: the engine resident on one dedicated OS thread, driven through an async handle
//! (the TEI `backends/core` pattern).
//!
//! Candle models are synchronous and large; exactly one thread owns the `Box<dyn Engine>` and runs
//! one request at a time, so async callers never block a runtime worker. Each command carries the
//! caller's tracing span and a oneshot for the reply; progress leaves on a tokio channel; a shared
//! `AtomicBool` cancels between denoising steps (and is set automatically when the caller stops
//! waiting). A panic inside the engine is caught, answered as `EngineError::Panicked` (Fatal), and
//! stops the thread: the health watch channel then says `Unhealthy` and later requests get
//! `EngineError::Stopped` (Transient, so another worker retries them).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::Span;

use super::{Engine, EngineError, EngineInfo, EngineOutput, EngineRequest, StepControl};

/// Health of the engine thread, published on a watch channel.
#[derive(Debug, Clone)]
pub enum Health {
    /// Loading / warming up.
    Starting,
    /// Warm and accepting requests.
    Ready,
    /// Warm-up failed (`EngineError::WarmUp`) or the engine panicked (`EngineError::Panicked`);
    /// the thread has stopped. Shared: every watcher sees the same error.
    Unhealthy(Arc<EngineError>),
    /// Every handle was dropped and the thread exited normally.
    Stopped,
}

/// Two `Unhealthy` values are equal when they share their error (errors have no equality).
impl PartialEq for Health {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Unhealthy(a), Self::Unhealthy(b)) => Arc::ptr_eq(a, b),
            _ => std::mem::discriminant(self) == std::mem::discriminant(other),
        }
    }
}

/// One progress event: `done` of `total` denoising steps finished (done = 0 before the first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepProgress {
    pub done: u32,
    pub total: u32,
}

struct Command {
    req: EngineRequest,
    span: Span,
    progress: Option<mpsc::UnboundedSender<StepProgress>>,
    cancel: Arc<AtomicBool>,
    reply: oneshot::Sender<Result<EngineOutput, EngineError>>,
}

/// Cheap, cloneable async handle to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    commands: mpsc::UnboundedSender<Command>,
    health: watch::Receiver<Health>,
    info: EngineInfo,
}

/// The owning side: the OS thread running the engine.
pub struct EngineThread {
    handle: EngineHandle,
    join: JoinHandle<()>,
}

impl EngineThread {
    /// Moves `engine` onto a new thread named `kontext-engine`. With `warmup`, the thread runs
    /// `Engine::warmup` first and reports `Ready` only when it succeeds; without, it is `Ready` at once.
    pub fn spawn(engine: Box<dyn Engine>, warmup: bool) -> std::io::Result<Self> {
        let info = engine.info();
        let (commands, rx) = mpsc::unbounded_channel();
        let (health_tx, health) = watch::channel(Health::Starting);
        let join = std::thread::Builder::new()
            .name("kontext-engine".into())
            .spawn(move || engine_loop(engine, warmup, rx, &health_tx))?;
        Ok(Self {
            handle: EngineHandle {
                commands,
                health,
                info,
            },
            join,
        })
    }

    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }

    /// Drops this side's handle and waits for the thread to exit, which happens once every other
    /// handle is gone too (a running request finishes first).
    pub fn join(self) {
        drop(self.handle);
        if self.join.join().is_err() {
            tracing::error!("engine thread panicked outside a request");
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

fn engine_loop(
    mut engine: Box<dyn Engine>,
    warmup: bool,
    mut rx: mpsc::UnboundedReceiver<Command>,
    health: &watch::Sender<Health>,
) {
    if warmup {
        let started = std::time::Instant::now();
        match catch_unwind(AssertUnwindSafe(|| engine.warmup())) {
            Ok(Ok(())) => tracing::info!(elapsed = ?started.elapsed(), "engine warm"),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "engine warm-up failed");
                health.send_replace(Health::Unhealthy(Arc::new(EngineError::WarmUp(Box::new(
                    e,
                )))));
                return;
            }
            Err(p) => {
                let msg = panic_message(p.as_ref());
                tracing::error!(panic = %msg, "engine panicked during warm-up");
                let e = EngineError::WarmUp(Box::new(EngineError::Panicked(msg)));
                health.send_replace(Health::Unhealthy(Arc::new(e)));
                return;
            }
        }
    }
    health.send_replace(Health::Ready);
    while let Some(cmd) = rx.blocking_recv() {
        let _entered = cmd.span.enter();
        if cmd.cancel.load(Ordering::SeqCst) {
            let _ = cmd.reply.send(Err(EngineError::Canceled));
            continue;
        }
        let cancel = Arc::clone(&cmd.cancel);
        let progress = cmd.progress;
        let mut on_step = |done: u32, total: u32| {
            if let Some(p) = &progress {
                // A caller that stopped listening must not stop the generation.
                let _ = p.send(StepProgress { done, total });
            }
            if cancel.load(Ordering::SeqCst) {
                StepControl::Cancel
            } else {
                StepControl::Continue
            }
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| engine.generate(&cmd.req, &mut on_step)));
        match outcome {
            Ok(result) => {
                // The caller may have given up; nothing else to do then.
                let _ = cmd.reply.send(result);
            }
            Err(p) => {
                let msg = panic_message(p.as_ref());
                tracing::error!(panic = %msg, "engine panicked; stopping the engine thread");
                let _ = cmd.reply.send(Err(EngineError::Panicked(msg.clone())));
                health.send_replace(Health::Unhealthy(Arc::new(EngineError::Panicked(msg))));
                return;
            }
        }
    }
    health.send_replace(Health::Stopped);
}

/// Sets the cancel flag if the waiting future is dropped before the reply arrives.
struct CancelOnDrop {
    flag: Arc<AtomicBool>,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.flag.store(true, Ordering::SeqCst);
        }
    }
}

impl EngineHandle {
    pub fn info(&self) -> &EngineInfo {
        &self.info
    }

    /// Current health and a receiver to watch it change.
    pub fn health(&self) -> watch::Receiver<Health> {
        self.health.clone()
    }

    /// Runs `req` on the engine thread inside the current tracing span. Progress events go to
    /// `progress`; setting `cancel` stops the run between steps with `EngineError::Canceled`, and so
    /// does dropping this future. A stopped thread answers `EngineError::Stopped`.
    pub async fn generate(
        &self,
        req: EngineRequest,
        progress: Option<mpsc::UnboundedSender<StepProgress>>,
        cancel: Arc<AtomicBool>,
    ) -> Result<EngineOutput, EngineError> {
        let (reply, answer) = oneshot::channel();
        let mut guard = CancelOnDrop {
            flag: Arc::clone(&cancel),
            armed: true,
        };
        let cmd = Command {
            req,
            span: Span::current(),
            progress,
            cancel,
            reply,
        };
        self.commands.send(cmd).map_err(|_| EngineError::Stopped)?;
        let result = answer.await.map_err(|_| EngineError::Stopped);
        guard.armed = false;
        result?
    }
}

#[cfg(test)]
mod tests {
    //! Thread plumbing only, with a scripted engine; the real tiny engine is exercised in
    //! `engine/tests/pipeline.rs`.
    use super::*;
    use crate::References;
    use std::time::Duration;

    /// Steps `req.steps` times; panics on the prompt "panic"; blocks each step on a channel when
    /// given one, so a test can cancel at a known step without sleeping.
    struct ScriptedEngine {
        gate: Option<std::sync::mpsc::Receiver<()>>,
        warmup_fails: bool,
    }

    impl Engine for ScriptedEngine {
        fn info(&self) -> EngineInfo {
            EngineInfo {
                linear_precision: "native".into(),
                model: "scripted".into(),
                device: "cpu".into(),
                gpu_name: None,
                dtype: "f32".into(),
                max_pixels: 64 * 64,
                settings: Default::default(),
            }
        }
        fn warmup(&mut self) -> Result<(), EngineError> {
            if self.warmup_fails {
                Err(EngineError::Weights(crate::WeightsError::Config {
                    file: "scripted".into(),
                    reason: "missing".into(),
                }))
            } else {
                Ok(())
            }
        }
        fn generate(
            &mut self,
            req: &EngineRequest,
            on_step: &mut dyn FnMut(u32, u32) -> StepControl,
        ) -> Result<EngineOutput, EngineError> {
            assert!(req.prompt != "panic", "scripted panic");
            for done in 0..=req.steps {
                if let (true, Some(g)) = (done > 0, &self.gate) {
                    g.recv().map_err(|_| EngineError::Stopped)?;
                }
                if on_step(done, req.steps) == StepControl::Cancel {
                    return Err(EngineError::Canceled);
                }
            }
            Ok(EngineOutput {
                image: image::RgbImage::new(req.width, req.height),
                packed_latent: None,
                seed: req.seed,
                timings: Default::default(),
                full_evaluations: req.steps,
                loras: Vec::new(),
            })
        }
    }

    fn request(prompt: &str, steps: u32) -> EngineRequest {
        EngineRequest {
            prompt: prompt.into(),
            references: References::none(),
            width: 16,
            height: 16,
            steps,
            guidance: 2.5,
            seed: 3,
            initial_latents: None,
            want_latent: false,
            caching: crate::flux::StepCaching::Off,
            loras: Vec::new(),
        }
    }

    async fn wait_for(rx: &mut watch::Receiver<Health>, want: impl Fn(&Health) -> bool) -> Health {
        let h = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|h| want(h)))
            .await
            .expect("health did not change within 10 s")
            .expect("health channel closed");
        h.clone()
    }

    #[tokio::test]
    async fn runs_reports_progress_and_stops_when_handles_drop() {
        let t = EngineThread::spawn(
            Box::new(ScriptedEngine {
                gate: None,
                warmup_fails: false,
            }),
            true,
        )
        .expect("spawn");
        let h = t.handle();
        let mut health = h.health();
        wait_for(&mut health, |h| *h == Health::Ready).await;
        let (ptx, mut prx) = mpsc::unbounded_channel();
        let out = h
            .generate(request("a", 3), Some(ptx), Arc::default())
            .await
            .expect("generate");
        assert_eq!(out.seed, 3);
        let mut seen = Vec::new();
        while let Ok(p) = prx.try_recv() {
            seen.push(p.done);
        }
        assert_eq!(seen, vec![0, 1, 2, 3]);
        drop(h);
        t.join();
        assert_eq!(*health.borrow(), Health::Stopped);
    }

    #[tokio::test]
    async fn cancel_between_steps() {
        let (gate_tx, gate_rx) = std::sync::mpsc::channel();
        let t = EngineThread::spawn(
            Box::new(ScriptedEngine {
                gate: Some(gate_rx),
                warmup_fails: false,
            }),
            false,
        )
        .expect("spawn");
        let h = t.handle();
        let cancel = Arc::new(AtomicBool::new(false));
        let (ptx, mut prx) = mpsc::unbounded_channel();
        let job = tokio::spawn({
            let (h, cancel) = (h.clone(), Arc::clone(&cancel));
            async move { h.generate(request("a", 10), Some(ptx), cancel).await }
        });
        // Let exactly two steps through, then cancel before releasing the third.
        gate_tx.send(()).expect("gate");
        gate_tx.send(()).expect("gate");
        let mut last = 0;
        while last < 2 {
            last = tokio::time::timeout(Duration::from_secs(10), prx.recv())
                .await
                .expect("progress within 10 s")
                .expect("progress channel open")
                .done;
        }
        cancel.store(true, Ordering::SeqCst);
        gate_tx.send(()).expect("gate");
        let res = job.await.expect("join");
        assert!(matches!(res, Err(EngineError::Canceled)), "{res:?}");
        let mut max_done = last;
        while let Ok(p) = prx.try_recv() {
            max_done = max_done.max(p.done);
        }
        // The flag is read right after each progress event: the engine may still be between
        // sending step 2 and reading the flag when it is set (then it stops at 2), or already
        // waiting for step 3 (then it stops after 3). Never later.
        assert!(
            (2..=3).contains(&max_done),
            "stopped at the step boundary after the cancel: {max_done}"
        );
        drop(gate_tx);
        drop(h);
        t.join();
    }

    #[tokio::test]
    async fn panic_is_fatal_and_marks_unhealthy() {
        let t = EngineThread::spawn(
            Box::new(ScriptedEngine {
                gate: None,
                warmup_fails: false,
            }),
            false,
        )
        .expect("spawn");
        let h = t.handle();
        let res = h.generate(request("panic", 2), None, Arc::default()).await;
        let err = res.expect_err("panic must be an error");
        assert!(
            matches!(err, EngineError::Panicked(ref m) if m.contains("scripted panic")),
            "{err:?}"
        );
        let mut health = h.health();
        let hv = wait_for(&mut health, |h| matches!(h, Health::Unhealthy(_))).await;
        assert!(matches!(hv, Health::Unhealthy(m) if m.to_string().contains("scripted panic")));
        let again = h.generate(request("a", 1), None, Arc::default()).await;
        assert!(matches!(again, Err(EngineError::Stopped)), "{again:?}");
        drop(h);
        t.join();
    }

    #[tokio::test]
    async fn failed_warmup_is_unhealthy() {
        let t = EngineThread::spawn(
            Box::new(ScriptedEngine {
                gate: None,
                warmup_fails: true,
            }),
            true,
        )
        .expect("spawn");
        let mut health = t.handle().health();
        let hv = wait_for(&mut health, |h| matches!(h, Health::Unhealthy(_))).await;
        assert!(
            matches!(hv, Health::Unhealthy(ref m) if matches!(**m, EngineError::WarmUp(_))
                && m.to_string().contains("warm-up failed")),
            "{hv:?}"
        );
        t.join();
    }
}

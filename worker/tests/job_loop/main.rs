//! The job loop (`Worker`) over the in-process queue and a local directory, with a scripted
//! engine on the real `EngineThread`: queue semantics without candle, so they run in
//! milliseconds and can script failures and delays that a real model cannot.
//! The real tiny engine runs the same loop in the end-to-end tests (tests/tests/e2e_*.rs).
//!
//! No sleeps for synchronization: tests wait on queue events or poll state with a deadline, and
//! the scripted engine blocks on a permit gate the test opens step by step.
//!
//! - `harness`: the scripted engine, the permit gate, the worker under test;
//! - `jobs`: jobs that run to their end; `stops`: jobs stopped early.

mod harness;
mod jobs;
mod stops;

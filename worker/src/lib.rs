//! kontext-worker: the FLUX.1 Kontext engine (candle) kept resident on one thread, and the job
//! loop that claims work from the queue, runs it, uploads results and commits.

pub mod engine;

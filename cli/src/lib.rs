//! kontext: the client of a Kontext Fleet coordinator (`kontext generate|edit|status|wait|fetch`)
//! and the embedded mode that runs a coordinator and a worker in one process (`kontext up`,
//! `kontext demo`).
//!
//! - `client`: the native HTTP API (submit, upload, status, cancel, result, follow over SSE);
//! - `sse`: the event-stream parser `client` uses;
//! - `progress`: indicatif bars fed by job events;
//! - `embedded`: coordinator + worker in this process;
//! - `chains` (chain routes on `Client`), `storyboard` (YAML storyboards → chain → frames,
//!   `contact_sheet`, manifest), `drift` (PSNR/SSIM between frames).

pub mod chains;
pub mod client;
pub mod contact_sheet;
pub mod drift;
pub mod embedded;
pub mod progress;
pub mod sse;
pub mod storyboard;

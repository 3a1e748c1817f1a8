//! The shapes world: a small synthetic world where the right answer to every prompt is known
//! exactly, so a model's text-to-image outputs and edits can be scored, not eyeballed.
//!
//! - `world`: shapes, colours, sizes, the 3×3 grid, scenes;
//! - `text`: captions and the closed vocabulary;
//! - `tasks`: cases (prompt, input scene, exact target) for text-to-image and six edits, and
//!   the training / held-out split;
//! - `render`: exact anti-aliased rendering;
//! - `judge`: reads an image back into a scene and scores it against its case;
//! - `dataset`: the training set on disk for the training script (`scripts/train-shapes.sh`).
//!
//! This crate knows nothing of the model or the engine; the same cases drive training, the
//! `kontext eval` command and the end-to-end tests.

pub mod dataset;
pub mod grammar;
pub mod judge;
pub mod render;
pub mod scorecard;
pub mod tasks;
pub mod text;
pub mod world;

pub use judge::{Seen, Verdict, judge, psnr, see};
pub use render::render;
pub use tasks::{Case, Split, Task, case};
pub use world::{Background, Colour, Object, Position, Scene, Shape, Size};

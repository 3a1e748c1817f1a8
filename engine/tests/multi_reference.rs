//! Edits with several reference images on the tiny model, through the real pipeline: one
//! reference is the plain Kontext edit under either position method (bit for bit); two
//! references change the result, and their order and the position method matter; more than
//! four, or more pixels together than one context may have, are refused naming the limit.

use std::sync::OnceLock;

use anyhow::Result;
use kontext_engine::pipeline::{EngineOptions, KontextEngine};
use kontext_engine::weights::{Layout, ModelDir};
use kontext_engine::{
    Context, Engine, EngineError, EngineRequest, ReferencePositions, References, StepControl, tiny,
};

fn model_dir() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        tiny::write(dir.path(), 0, Layout::Diffusers).expect("writing the tiny model");
        dir
    })
    .path()
}

fn image(kind: u32) -> Context {
    Context::Image {
        image: image::RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([
                (x * 3 + kind * 80) as u8,
                (y * 4) as u8,
                ((x + y + kind) % 2 * 255) as u8,
            ])
        }),
        width: 64,
        height: 48,
        cache_key: Some(format!("in/test/reference-{kind}.png")),
    }
}

fn edit(contexts: Vec<Context>, positions: ReferencePositions) -> Result<Vec<f32>, EngineError> {
    let dir = ModelDir::open(model_dir())?;
    let mut e = KontextEngine::load(&dir, "tiny", EngineOptions::cpu())?;
    let req = EngineRequest {
        prompt: "put the cat from the first image into the second".into(),
        references: References {
            contexts,
            positions,
        },
        width: 64,
        height: 48,
        steps: 3,
        guidance: 2.5,
        seed: 11,
        initial_latents: None,
        want_latent: true,
        caching: kontext_engine::flux::StepCaching::Off,
        loras: Vec::new(),
    };
    let out = e.generate(&req, &mut |_, _| StepControl::Continue)?;
    Ok(out.packed_latent.unwrap_or_default())
}

#[test]
fn one_reference_is_the_single_image_edit_in_both_methods() -> Result<()> {
    let plain = edit(vec![image(0)], ReferencePositions::default())?;
    assert_eq!(plain, edit(vec![image(0)], ReferencePositions::Offset)?);
    assert_eq!(plain, edit(vec![image(0)], ReferencePositions::Index)?);
    Ok(())
}

#[test]
fn two_references_both_count_and_their_placement_matters() -> Result<()> {
    let first = edit(vec![image(0)], ReferencePositions::Offset)?;
    let second = edit(vec![image(1)], ReferencePositions::Offset)?;
    let both = edit(vec![image(0), image(1)], ReferencePositions::Offset)?;
    let swapped = edit(vec![image(1), image(0)], ReferencePositions::Offset)?;
    let indexed = edit(vec![image(0), image(1)], ReferencePositions::Index)?;
    assert_ne!(both, first);
    assert_ne!(both, second);
    assert_ne!(both, swapped, "the order places the references differently");
    assert_ne!(both, indexed, "offset and index give different positions");
    assert!(both.iter().all(|v| v.is_finite()));
    Ok(())
}

#[test]
fn too_many_or_too_large_references_are_refused_by_limit() -> Result<()> {
    let five = (0..5).map(image).collect();
    let err = edit(five, ReferencePositions::Offset).expect_err("five references");
    assert!(
        matches!(&err, EngineError::InvalidInput(m) if m.contains("at most 4")),
        "{err}"
    );
    let big = |k: u32| Context::Image {
        image: image::RgbImage::new(16, 16),
        width: 1152,
        height: 1024,
        cache_key: Some(format!("in/test/big-{k}.png")),
    };
    // Each 1152x1024 fits the default 2 MP alone; four together (4.7 MP) exceed twice that.
    let err = edit((0..4).map(big).collect(), ReferencePositions::Offset).expect_err("too big");
    assert!(
        matches!(&err, EngineError::InvalidInput(m) if m.contains("4718592") && m.contains("at most 4194304")),
        "{err}"
    );
    Ok(())
}

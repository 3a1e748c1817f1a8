//! Unit tests of chain request validation.

use super::*;
use crate::chain::turn_seed;
use crate::object_key::ObjectKey;

fn turn(prompt: &str) -> TurnRequest {
    TurnRequest {
        prompt: prompt.into(),
        ..TurnRequest::default()
    }
}

fn limits() -> Limits {
    Limits {
        min_side: 64,
        default_generate_size: (256, 192),
        context_max_pixels: 128 * 128,
        ..Limits::default()
    }
}

fn image() -> InputImage {
    InputImage {
        key: ObjectKey::parse("in/acme/a.png").expect("valid key"),
        width: 300,
        height: 200,
    }
}

#[test]
fn text_to_image_start_then_edit_templates_of_the_frame_size() {
    let req = ChainRequest {
        prompt: Some("a red fox".into()),
        turns: vec![
            turn("in the snow"),
            TurnRequest {
                seed: Some(9),
                steps: Some(3),
                ..turn("at night")
            },
        ],
        carry: Some("latent".into()),
        seed: Some(77),
        steps: Some(5),
        ..ChainRequest::default()
    };
    let v = validate_chain(&req, None, &limits(), || panic!("seed was given")).expect("valid");
    assert_eq!(
        (v.seed, v.carry, v.on_failure),
        (77, Carry::Latent, FailurePolicy::Stop)
    );
    assert_eq!(v.turns.len(), 3);
    let t1 = &v.turns[0];
    assert_eq!(
        (t1.kind, t1.prompt.as_str(), t1.width, t1.height),
        (JobKind::Generate, "a red fox", 256, 192)
    );
    assert_eq!(
        (t1.seed, t1.steps, t1.keep_latent),
        (turn_seed(77, 1), 5, true)
    );
    let t2 = &v.turns[1];
    assert_eq!(
        (t2.kind, t2.input.clone(), t2.width, t2.height),
        (JobKind::Edit, None, 256, 192)
    );
    assert_eq!(
        (t2.context_width, t2.context_height),
        (Some(256), Some(192))
    );
    assert_eq!(
        (t2.seed, t2.steps, t2.keep_latent),
        (turn_seed(77, 2), 5, true)
    );
    let t3 = &v.turns[2];
    assert_eq!((t3.seed, t3.steps, t3.prompt.as_str()), (9, 3, "at night"));
}

#[test]
fn an_input_image_fixes_the_frame_size_for_every_turn() {
    let req = ChainRequest {
        input_image: Some("upload".into()),
        turns: vec![turn("make it blue"), turn("add a hat")],
        resize: Some("keep".into()),
        ..ChainRequest::default()
    };
    let v = validate_chain(&req, Some(image()), &limits(), || 5).expect("valid");
    assert_eq!(v.seed, 5);
    assert_eq!(v.input, Some(image()));
    let t1 = &v.turns[0];
    assert_eq!(
        (t1.kind, t1.input.clone(), t1.prompt.as_str()),
        (JobKind::Edit, Some(image()), "make it blue")
    );
    // keep: 300x200 shrunk under 128² and floored to multiples of 16.
    let frame = (t1.width, t1.height);
    assert_eq!(frame, (144, 96));
    let t2 = &v.turns[1];
    assert_eq!(
        (t2.width, t2.height, t2.context_width, t2.context_height),
        (144, 96, Some(144), Some(96))
    );
    assert!(!t2.keep_latent);
}

#[test]
fn errors_name_the_turn_and_field_and_are_all_reported() {
    let req = ChainRequest {
        turns: vec![
            turn(" "),
            turn("ok"),
            TurnRequest {
                steps: Some(500),
                ..turn("too many")
            },
        ],
        ..ChainRequest::default()
    };
    let e = validate_chain(&req, None, &limits(), || 1).expect_err("invalid");
    let fields: Vec<&str> = e.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["turns[0].prompt", "turns[2].steps"], "{e:?}");
    assert!(
        e.errors[1]
            .message
            .starts_with("turns[2].steps must be between 1 and 100"),
        "{e:?}"
    );

    let bad = ChainRequest {
        input_image: Some("x".into()),
        prompt: Some("p".into()),
        carry: Some("pixels".into()),
        on_failure: Some("retry".into()),
        ..ChainRequest::default()
    };
    let e = validate_chain(&bad, Some(image()), &limits(), || 1).expect_err("invalid");
    let fields: Vec<&str> = e.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["carry", "on_failure", "prompt", "turns"]);
    let too_long = ChainRequest {
        turns: vec![turn("t"); MAX_TURNS + 1],
        ..ChainRequest::default()
    };
    let e = validate_chain(&too_long, None, &limits(), || 1).expect_err("invalid");
    assert!(
        e.has("turns") && e.errors[0].limit.as_deref() == Some("1..=100"),
        "{e:?}"
    );
}

//! Unit tests of `validate`: defaults, every bound, and that messages name field and limit.

use super::*;
use crate::object_key::ObjectKey;

fn req(prompt: &str) -> JobRequest {
    JobRequest {
        prompt: prompt.into(),
        ..JobRequest::default()
    }
}

fn image(width: u32, height: u32) -> InputImage {
    InputImage {
        key: ObjectKey::parse("inputs/abc.png").expect("valid key"),
        width,
        height,
    }
}

fn edit_req(prompt: &str) -> JobRequest {
    JobRequest {
        input_image: Some("upload:abc".into()),
        ..req(prompt)
    }
}

fn ok(r: &JobRequest, input: Option<InputImage>) -> ValidJobSpec {
    validate(r, input, &Limits::default(), || 42).expect("request should be valid")
}

fn errors(r: &JobRequest, input: Option<InputImage>) -> ValidationErrors {
    match validate(r, input, &Limits::default(), || 42) {
        Ok(spec) => panic!("expected errors, got {spec:?}"),
        Err(e) => e,
    }
}

/// The only error is on `field`, and its message names the field and contains `needle`.
fn only_error(e: &ValidationErrors, field: &str, needle: &str) {
    assert_eq!(e.errors.len(), 1, "{e:?}");
    let err = &e.errors[0];
    assert_eq!(err.field, field, "{e:?}");
    assert!(
        err.message.contains(field),
        "message must name the field: {}",
        err.message
    );
    assert!(
        err.message.contains(needle),
        "message must contain {needle:?}: {}",
        err.message
    );
}

#[test]
fn generate_defaults() {
    let spec = ok(&req("  a red fox  "), None);
    assert_eq!(spec.kind, JobKind::Generate);
    assert_eq!(spec.prompt, "a red fox");
    assert_eq!((spec.width, spec.height), (1024, 1024));
    assert_eq!(spec.steps, 28);
    assert_eq!(spec.guidance, 2.5);
    assert_eq!(spec.seed, 42, "server picks the seed when absent");
    assert_eq!(spec.output_format, OutputFormat::Png);
    assert_eq!(spec.priority, Priority::Standard);
    assert_eq!((spec.context_width, spec.context_height), (None, None));
}

#[test]
fn client_seed_wins_and_the_seed_source_is_not_called() {
    let r = JobRequest {
        seed: Some(7),
        ..req("fox")
    };
    let spec = validate(&r, None, &Limits::default(), || {
        panic!("seed source called")
    })
    .expect("valid");
    assert_eq!(spec.seed, 7);
}

#[test]
fn edit_targets_the_snapped_context_size() {
    let spec = ok(&edit_req("make it blue"), Some(image(640, 480)));
    assert_eq!(spec.kind, JobKind::Edit);
    // 4:3 snaps to 1184x880 (BFL PREFERED_KONTEXT_RESOLUTIONS).
    assert_eq!(
        (spec.context_width, spec.context_height),
        (Some(1184), Some(880))
    );
    assert_eq!((spec.width, spec.height), (1184, 880));
    assert_eq!(spec.resize, ResizeMode::Snap);
}

#[test]
fn edit_keep_mode_keeps_the_aspect() {
    let r = JobRequest {
        resize: Some("keep".into()),
        ..edit_req("x")
    };
    let spec = ok(&r, Some(image(1200, 800)));
    assert_eq!(spec.resize, ResizeMode::Keep);
    assert_eq!((spec.width, spec.height), (1200, 800));
    let r = JobRequest {
        resize: Some("stretch".into()),
        ..edit_req("x")
    };
    only_error(
        &errors(&r, Some(image(1200, 800))),
        "resize",
        "\"snap\" or \"keep\"",
    );
}

#[test]
fn explicit_size_and_aspect_ratio() {
    let r = JobRequest {
        width: Some(768),
        height: Some(512),
        ..req("x")
    };
    assert_eq!((ok(&r, None).width, ok(&r, None).height), (768, 512));
    let r = JobRequest {
        aspect_ratio: Some("16:9".into()),
        ..req("x")
    };
    let spec = ok(&r, None);
    assert_eq!((spec.width, spec.height), (1360, 768));
}

#[test]
fn sizes_must_be_multiples_of_16_within_bounds() {
    let r = JobRequest {
        width: Some(1000),
        height: Some(512),
        ..req("x")
    };
    only_error(&errors(&r, None), "width", "multiple of 16");
    let r = JobRequest {
        width: Some(128),
        height: Some(512),
        ..req("x")
    };
    only_error(&errors(&r, None), "width", "between 256 and 2048");
    let r = JobRequest {
        width: Some(2048),
        height: Some(4096),
        ..req("x")
    };
    let e = errors(&r, None);
    assert!(e.has("height"), "{e:?}");
    assert!(
        e.errors
            .iter()
            .any(|f| f.message.contains("at most 2097152 pixels")),
        "{e:?}"
    );
}

#[test]
fn width_needs_height_and_excludes_aspect_ratio() {
    let r = JobRequest {
        width: Some(512),
        ..req("x")
    };
    only_error(&errors(&r, None), "height", "required");
    let r = JobRequest {
        width: Some(512),
        height: Some(512),
        aspect_ratio: Some("1:1".into()),
        ..req("x")
    };
    only_error(&errors(&r, None), "aspect_ratio", "width/height");
}

#[test]
fn aspect_ratio_is_bounded_and_parsed() {
    let r = JobRequest {
        aspect_ratio: Some("4:1".into()),
        ..req("x")
    };
    only_error(&errors(&r, None), "aspect_ratio", "between 9:21 and 21:9");
    let r = JobRequest {
        aspect_ratio: Some("wide".into()),
        ..req("x")
    };
    only_error(&errors(&r, None), "aspect_ratio", "\"16:9\"");
    let r = JobRequest {
        aspect_ratio: Some("9:21".into()),
        ..req("x")
    };
    let spec = ok(&r, None);
    assert!(spec.height > spec.width);
}

#[test]
fn prompt_is_required_and_bounded() {
    only_error(&errors(&req("   "), None), "prompt", "required");
    let long = "a".repeat(2_001);
    only_error(
        &errors(&req(&long), None),
        "prompt",
        "at most 2000 characters",
    );
    assert_eq!(
        ok(&req(&"ä".repeat(2_000)), None).prompt.chars().count(),
        2_000
    );
}

#[test]
fn steps_and_guidance_bounds() {
    let r = JobRequest {
        steps: Some(0),
        ..req("x")
    };
    only_error(&errors(&r, None), "steps", "between 1 and 100");
    let r = JobRequest {
        steps: Some(101),
        ..req("x")
    };
    only_error(&errors(&r, None), "steps", "(got 101)");
    let r = JobRequest {
        guidance: Some(25.0),
        ..req("x")
    };
    only_error(&errors(&r, None), "guidance", "between 0 and 20");
    let r = JobRequest {
        guidance: Some(f32::NAN),
        ..req("x")
    };
    only_error(&errors(&r, None), "guidance", "between");
}

#[test]
fn enumerations_name_their_allowed_values() {
    let r = JobRequest {
        output_format: Some("gif".into()),
        ..req("x")
    };
    only_error(&errors(&r, None), "output_format", "\"png\" or \"jpeg\"");
    let r = JobRequest {
        priority: Some("urgent".into()),
        ..req("x")
    };
    only_error(
        &errors(&r, None),
        "priority",
        "\"high\", \"standard\" or \"bulk\"",
    );
    let r = JobRequest {
        priority: Some("bulk".into()),
        output_format: Some("jpeg".into()),
        ..req("x")
    };
    let spec = ok(&r, None);
    assert_eq!(
        (spec.priority, spec.output_format),
        (Priority::Bulk, OutputFormat::Jpeg)
    );
}

#[test]
fn input_image_bounds_and_resolution() {
    only_error(
        &errors(&edit_req("x"), Some(image(10_000, 100))),
        "input_image",
        "between 16 and 8192",
    );
    only_error(
        &errors(&edit_req("x"), Some(image(8_000, 8_000))),
        "input_image",
        "at most 16777216 pixels",
    );
    only_error(&errors(&edit_req("x"), None), "input_image", "not resolved");
    only_error(
        &errors(&req("x"), Some(image(512, 512))),
        "input_image",
        "needs an input_image",
    );
    let r = JobRequest {
        resize: Some("keep".into()),
        ..req("x")
    };
    only_error(&errors(&r, None), "resize", "only to edits");
}

#[test]
fn webhook_url_must_be_http() {
    let r = JobRequest {
        webhook_url: Some("ftp://x".into()),
        ..req("x")
    };
    only_error(&errors(&r, None), "webhook_url", "http://");
    let r = JobRequest {
        webhook_url: Some("https://hooks.example.com/k".into()),
        ..req("x")
    };
    assert_eq!(
        ok(&r, None).webhook_url.as_deref(),
        Some("https://hooks.example.com/k")
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let r = JobRequest {
        steps: Some(0),
        guidance: Some(-1.0),
        priority: Some("x".into()),
        width: Some(100),
        height: Some(100),
        ..req("")
    };
    let e = errors(&r, None);
    for field in ["prompt", "steps", "guidance", "priority", "width", "height"] {
        assert!(e.has(field), "missing {field}: {e:?}");
    }
    assert!(e.to_string().starts_with("invalid job request: "));
}

#[test]
fn requests_parse_from_bfl_style_json() {
    let r: JobRequest = serde_json::from_str(
        r#"{"prompt":"p","aspect_ratio":"1:1","safety_tolerance":2,"seed":3}"#,
    )
    .expect("unknown BFL fields are ignored");
    assert_eq!(r.seed, Some(3));
    assert_eq!(ok(&r, None).width, 1024);
}

#[test]
fn fields_are_checked_before_the_input_image_is_known() {
    let r = JobRequest {
        steps: Some(0),
        ..edit_req("make it blue")
    };
    let e = check_job(&r, &Limits::default()).expect_err("bad steps");
    assert_eq!(
        e.errors.len(),
        1,
        "no error about the unresolved image: {e:?}"
    );
    let fields = check_job(&edit_req("make it blue"), &Limits::default()).expect("valid");
    assert_eq!(fields.input_image(), Some("upload:abc"));
    // Without width/height the size comes from the context, known only now.
    let spec = fields
        .resolve(Some(image(640, 480)), &Limits::default(), || 1)
        .expect("valid");
    assert_eq!((spec.width, spec.height), (1184, 880));
}

#[test]
fn webhook_hosts_are_read_as_a_url_parser_reads_them() {
    let ip = |url: &str| {
        let r = JobRequest {
            webhook_url: Some(url.into()),
            ..req("x")
        };
        let fields = check_job(&r, &Limits::default()).expect("valid");
        fields.webhook_url().expect("a webhook").ip()
    };
    assert_eq!(ip("http://2130706433/h"), Some([127, 0, 0, 1].into()));
    assert_eq!(
        ip("http://[::1]:8080/h"),
        Some(std::net::Ipv6Addr::LOCALHOST.into())
    );
    assert_eq!(ip("https://hooks.example.com/h"), None);
}

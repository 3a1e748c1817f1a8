//! docs/openapi.json must be exactly what the code generates (TGI's autodocs check).

#[test]
fn committed_openapi_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    let generated = kontext_coordinator::openapi_json();
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let first_diff = committed
            .lines()
            .zip(generated.lines())
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .map_or_else(
                || "the files differ in length".to_owned(),
                |(i, (a, b))| format!("line {}: committed {a:?}, generated {b:?}", i + 1),
            );
        panic!(
            "docs/openapi.json is out of date ({first_diff}). Regenerate it with\n  \
             cargo run -p kontext-coordinator -- print-openapi > docs/openapi.json"
        );
    }
}

#[test]
fn the_document_lists_every_route_and_both_auth_schemes() {
    let doc: serde_json::Value =
        serde_json::from_str(&kontext_coordinator::openapi_json()).expect("valid JSON");
    for path in [
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/cancel",
        "/v1/jobs/{id}/events",
        "/v1/jobs/{id}/result",
        "/v1/uploads",
        "/v1/chains",
        "/v1/chains/{id}",
        "/v1/chains/{id}/turns",
        "/v1/chains/{id}/fork",
        "/v1/chains/{id}/cancel",
        "/v1/flux-kontext-dev",
        "/v1/get_result",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    let schemes = &doc["components"]["securitySchemes"];
    assert!(schemes["bearer"].is_object() && schemes["x_key"].is_object());
    let submit = &doc["paths"]["/v1/jobs"]["post"]["responses"];
    for status in ["202", "200", "400", "401", "413", "422", "429"] {
        assert!(submit[status].is_object(), "POST /v1/jobs lacks {status}");
    }
}

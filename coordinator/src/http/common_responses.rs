//! The answers every route may give, added to each operation of the OpenAPI document so that
//! no status code the server can send is undocumented: authentication (401, and 429 once a
//! client failed too often; on `/v1/admin/*` also 403 when the admin API is off), the request guards of every JSON body (400, 408, 413, 415, 422),
//! open mode's Host check (421) and an unavailable queue or store (503). A handler's own
//! description of a code wins; only missing codes are added. Optional query and header
//! parameters are made non-nullable: a query string or a header cannot carry JSON's `null`, only
//! be absent.

use utoipa::Modify;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{SchemaType, Type};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder, Schema};

pub struct CommonResponses;

/// `[T, "null"]` → `T` in every parameter's schema.
fn drop_null_from_parameters(op: &mut Operation) {
    for param in op.parameters.iter_mut().flatten() {
        if let Some(RefOr::T(Schema::Object(obj))) = param.schema.as_mut()
            && let SchemaType::Array(types) = &obj.schema_type
        {
            let kept: Vec<Type> = types
                .iter()
                .filter(|t| **t != Type::Null)
                .cloned()
                .collect();
            if let [only] = kept.as_slice() {
                obj.schema_type = SchemaType::Type(only.clone());
            }
        }
    }
}

fn add(op: &mut Operation, status: &str, description: &str) {
    op.responses
        .responses
        .entry(status.to_owned())
        .or_insert_with(|| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build(),
            )
        });
}

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let v1 = path.starts_with("/v1/");
            let signed_blob = path.starts_with("/v1/blobs/");
            for op in [
                item.get.as_mut(),
                item.post.as_mut(),
                item.put.as_mut(),
                item.delete.as_mut(),
                item.patch.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                drop_null_from_parameters(op);
                let keyed = op.security.as_ref().is_some_and(|s| !s.is_empty());
                if path.starts_with("/v1/admin/") {
                    add(op, "401", "Missing or unknown admin key");
                    add(op, "403", "The admin API is off (no --admin-keys)");
                }
                if keyed {
                    add(op, "401", "Missing or unknown API key");
                    add(
                        op,
                        "429",
                        "Too many failed authentications from this client (see Retry-After), \
                         or a tenant limit",
                    );
                }
                if op.request_body.is_some() {
                    add(
                        op,
                        "400",
                        "The body cannot be read: malformed JSON or a wrong type",
                    );
                    add(
                        op,
                        "408",
                        "The body did not arrive within --body-read-timeout",
                    );
                    add(op, "413", "The body is larger than --max-body-bytes");
                    add(
                        op,
                        "415",
                        "Open (keyless) mode only: a JSON route was sent another Content-Type",
                    );
                    add(op, "422", "A field's value is not acceptable");
                }
                add(
                    op,
                    "421",
                    "Open (keyless) mode only: the Host header is not a loopback name",
                );
                if v1 && !signed_blob {
                    add(
                        op,
                        "503",
                        "The queue or the store is unavailable; retry shortly",
                    );
                }
            }
        }
    }
}

//! `/openapi.json`: OpenAPI 3.1 generated from the handlers' annotations.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Queue", description = "Event-sourced passkey authentication (api-contract.md v1)"),
    modifiers(&BearerAuth),
    tags(
        (name = "passkeys", description = "WebAuthn registration and login"),
        (name = "sessions", description = "Refresh, logout, sessions, me"),
        (name = "credentials", description = "The customer's passkeys"),
        (name = "backup codes"),
        (name = "email"),
        (name = "service", description = "Service-to-service routes (service tokens with scopes)"),
        (name = "operations"),
        (name = "saml", description = "Each tenant's SAML 2.0 service provider, for browsers and IdPs (outside /api/v1)")
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// Responses every operation of `doc` (the `/api/v1` routes, which run
/// inside the resilience layers) can give whatever its handler says:
/// 429 `overloaded` (load shedding, with Retry-After) and 503 `unavailable`
/// / `shutting_down`; operations with a body also 400 (malformed JSON) and
/// 413 `payload_too_large`. Added here, once, so the document matches what
/// the middleware does (schemathesis checks status codes against it).
pub fn add_shared_responses(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    let retry_after_header = || {
        utoipa::openapi::header::HeaderBuilder::new()
            .description(Some("seconds to wait before retrying"))
            .build()
    };
    let error = |description: &str, retry_after: bool| {
        let mut response = ResponseBuilder::new().description(description).content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorEnvelope")))
                .build(),
        );
        if retry_after {
            response = response.header("Retry-After", retry_after_header());
        }
        response.build()
    };
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            // A JSON body's refusals; the ACS's form documents its own.
            let has_body = operation
                .request_body
                .as_ref()
                .is_some_and(|body| match body {
                    RefOr::T(body) => body.content.contains_key("application/json"),
                    RefOr::Ref(_) => true,
                });
            let responses = &mut operation.responses.responses;
            let mut add = |status: &str, description: &str, retry_after: bool| {
                let response = responses
                    .entry(status.to_owned())
                    .or_insert_with(|| error(description, retry_after).into());
                // A handler's own 429/503 entry gets the header the error mapping sends.
                if let (true, RefOr::T(response)) = (retry_after, response) {
                    response
                        .headers
                        .entry("Retry-After".to_owned())
                        .or_insert_with(|| retry_after_header().into());
                }
            };
            add("429", "rate_limited or overloaded", true);
            add("503", "unavailable or shutting_down", true);
            if has_body {
                add("400", "invalid_request: malformed JSON", false);
                add("413", "payload_too_large: body over 64 KiB", false);
            }
        }
    }
}

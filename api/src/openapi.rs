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
        (name = "operations")
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

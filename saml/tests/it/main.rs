#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! queue-saml against a real identity provider: pysaml2 signing with
//! xmlsec1 (scripts/saml-setup installs both).

mod idp;
mod metadata;
mod request;
mod response;

//! What makes the service HTTP: the error table (the one place errors
//! become statuses and contract codes), extractors, the OpenAPI document,
//! metrics, health, discovery, read-your-writes, the read and handler
//! deadlines, the client address, and the hosted pages.

pub mod client_address;
pub mod consistency;
pub mod discovery;
pub mod error;
pub mod extract;
pub mod health;
pub mod metrics;
pub mod openapi;
pub mod pages;
pub mod timeouts;

//! Work that spans several aggregates or side tables, written once and
//! called by the handlers.

pub mod founders;

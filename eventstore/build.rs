//! `sqlx::migrate!` embeds ../migrations at compile time; without this, an
//! added migration file does not rebuild the crate and incremental builds
//! (and tests) run the old set (sqlx's documented workaround).
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}

//! Lines on standard output that end the process quietly when the reader
//! has gone away (`queue --json verify | head -1`). Rust ignores SIGPIPE, so
//! `println!` would panic on the closed pipe instead; resetting the signal
//! needs `unsafe`, which the workspace forbids. Exit status 141 (128 +
//! SIGPIPE) is what a process killed by SIGPIPE reports, so a pipeline with
//! `pipefail` still sees that the output was cut short.

use std::io::{ErrorKind, Write};

/// The exit status of a process whose output pipe was closed.
pub const BROKEN_PIPE_STATUS: i32 = 141;

/// Writes one line to standard output, as `println!` does.
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_fmt(args)
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush());
    if let Err(e) = written {
        if e.kind() == ErrorKind::BrokenPipe {
            std::process::exit(BROKEN_PIPE_STATUS);
        }
        // Anything else (a full disk behind a redirect): say so once, on
        // stderr, and let the command finish with its own status.
        let _ = writeln!(
            std::io::stderr(),
            "queue: error: cannot write to standard output: {e}"
        );
    }
}

/// `println!` for command output: see the module documentation.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::stdout::line(format_args!($($arg)*))
    };
}
pub(crate) use out;

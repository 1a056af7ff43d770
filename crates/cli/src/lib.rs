//! The `distfs` package: the client tool's commands (`cmd`), `distfs local up` (`local`),
//! shared plumbing of the three programs (`runtime`: logging, signals, exit codes) and
//! human/JSON output (`output`).

pub mod cert;
pub mod cmd;
pub mod local;
pub mod output;
pub mod runtime;
pub mod server_main;

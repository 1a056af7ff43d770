//! Logging for the servers: `tracing` with a per-module filter (`RUST_LOG` syntax, e.g.
//! `info,distfs_meta::repair=debug`) that can be replaced while running (SIGHUP), human
//! output (colored on a terminal) or JSON lines, to stderr or to a file rotated daily or
//! hourly (`tracing-appender`, written by a background thread).

use crate::error::OpsError;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Mutex;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

/// How log lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event with its spans (colored on a terminal).
    Pretty,
    /// One JSON object per line, with the current span and the span list.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pretty" | "text" => Ok(LogFormat::Pretty),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("log format must be pretty or json, got `{other}`")),
        }
    }
}

/// When a log file is rotated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rotation {
    Daily,
    Hourly,
    Never,
}

impl FromStr for Rotation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "daily" => Ok(Rotation::Daily),
            "hourly" => Ok(Rotation::Hourly),
            "never" => Ok(Rotation::Never),
            other => Err(format!("log rotation must be daily, hourly or never, got `{other}`")),
        }
    }
}

/// Where and how to log.
#[derive(Clone, Debug)]
pub struct LogOptions {
    /// The filter, `RUST_LOG` syntax.
    pub filter: String,
    /// Default: pretty on stderr, JSON in a file.
    pub format: Option<LogFormat>,
    /// Log to this file (rotated: `NAME.YYYY-MM-DD` for daily) instead of stderr.
    pub file: Option<PathBuf>,
    pub rotation: Rotation,
    /// Rotated files kept (older ones are deleted).
    pub keep: usize,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions { filter: "info".into(), format: None, file: None, rotation: Rotation::Daily, keep: 14 }
    }
}

/// Checks a filter string (`RUST_LOG` syntax).
pub fn parse_filter(filter: &str) -> Result<EnvFilter, OpsError> {
    EnvFilter::builder().parse(filter).map_err(|e| OpsError::Log(format!("bad log filter `{filter}`: {e}")))
}

/// Keeps logging alive and lets the filter change. Hold it for the life of the program:
/// dropping it flushes and stops the file writer.
pub struct LogHandle {
    reload: Option<reload::Handle<EnvFilter, Registry>>,
    current: Mutex<String>,
    _guard: Option<tracing_appender::non_blocking::WorkerGuard>,
}

impl LogHandle {
    /// Replaces the filter (a SIGHUP with a changed `log_level`).
    pub fn set_filter(&self, filter: &str) -> Result<(), OpsError> {
        let f = parse_filter(filter)?;
        let Some(h) = &self.reload else {
            return Err(OpsError::Log("logging was set up by someone else; the filter cannot change".into()));
        };
        h.reload(f).map_err(|e| OpsError::Log(format!("cannot replace the log filter: {e}")))?;
        *self.current.lock().expect("log filter lock") = filter.to_string();
        Ok(())
    }

    /// The filter in force.
    pub fn filter(&self) -> String {
        self.current.lock().expect("log filter lock").clone()
    }
}

type Boxed =
    Box<dyn Layer<tracing_subscriber::layer::Layered<reload::Layer<EnvFilter, Registry>, Registry>> + Send + Sync>;

/// Installs the global subscriber. If one is installed already (tests that start
/// servers in-process), the existing one stays and the handle cannot reload.
pub fn init(opts: &LogOptions) -> Result<LogHandle, OpsError> {
    let filter = parse_filter(&opts.filter)?;
    let (filter_layer, reload) = reload::Layer::new(filter);
    let mut guard = None;
    let fmt_layer: Boxed = match &opts.file {
        Some(path) => {
            let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
            let name = path
                .file_name()
                .ok_or_else(|| OpsError::Log(format!("log file `{}` has no file name", path.display())))?;
            std::fs::create_dir_all(dir)
                .map_err(|e| OpsError::Log(format!("cannot create log directory {}: {e}", dir.display())))?;
            let rotation = match opts.rotation {
                Rotation::Daily => tracing_appender::rolling::Rotation::DAILY,
                Rotation::Hourly => tracing_appender::rolling::Rotation::HOURLY,
                Rotation::Never => tracing_appender::rolling::Rotation::NEVER,
            };
            let appender = tracing_appender::rolling::RollingFileAppender::builder()
                .rotation(rotation)
                .filename_prefix(name.to_string_lossy())
                .max_log_files(opts.keep.max(1))
                .build(dir)
                .map_err(|e| OpsError::Log(format!("cannot open log file {}: {e}", path.display())))?;
            let (writer, g) = tracing_appender::non_blocking(appender);
            guard = Some(g);
            match opts.format.unwrap_or(LogFormat::Json) {
                LogFormat::Json => Box::new(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .with_current_span(true)
                        .with_span_list(true)
                        .with_writer(writer),
                ),
                LogFormat::Pretty => Box::new(tracing_subscriber::fmt::layer().with_ansi(false).with_writer(writer)),
            }
        }
        None => match opts.format.unwrap_or(LogFormat::Pretty) {
            LogFormat::Json => Box::new(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(true)
                    .with_writer(std::io::stderr),
            ),
            LogFormat::Pretty => Box::new(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_writer(std::io::stderr),
            ),
        },
    };
    let installed = tracing_subscriber::registry().with(filter_layer).with(fmt_layer).try_init().is_ok();
    Ok(LogHandle { reload: installed.then_some(reload), current: Mutex::new(opts.filter.clone()), _guard: guard })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_and_names_parse() {
        assert!(parse_filter("info,distfs_meta::repair=debug").is_ok());
        assert!(parse_filter("info,distfs_meta=loud").is_err());
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert!("xml".parse::<LogFormat>().is_err());
        assert_eq!("daily".parse::<Rotation>(), Ok(Rotation::Daily));
    }
}

//! Log lines on stderr, through `tracing`: the engine logs with `tracing::{error, warn,
//! info}` and the `tributary` command installs the subscriber ([`init`]).
//!
//! * `--log-format text` (the default) writes what a person reads: `error: …`,
//!   `warning: …`, and info lines as they are (`tributary: serving on http://…`), one per
//!   line, with any structured fields after the message as `name=value`.
//! * `--log-format json` writes one JSON object per line: `timestamp`, `level`, `target`
//!   and `fields` (with `message`), for a log collector.
//! * `RUST_LOG` filters either (`tracing_subscriber`'s `EnvFilter` syntax: `warn`,
//!   `tributary=debug,hyper=info`, …); the default is `info`.
//!
//! The progress line (`progress: …`, about once a second) is not a log line: it is for a
//! terminal, printed only when stderr is one unless `--progress` asks for it, and plain
//! text whatever `--log-format` says.
//!
//! A program that uses the library without calling [`init`] gets no log lines (install
//! any `tracing` subscriber to see them).

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people: `error: …`, `warning: …`, info lines as they are.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The `--log-format text` line: a level prefix (none for info), the message, then
/// other fields as `name=value`.
struct Plain;

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        writer.write_str(prefix(*event.metadata().level()))?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// The text line's prefix of a level.
fn prefix(level: Level) -> &'static str {
    match level {
        Level::ERROR => "error: ",
        Level::WARN => "warning: ",
        Level::INFO => "",
        Level::DEBUG => "debug: ",
        Level::TRACE => "trace: ",
    }
}

/// The filter: `RUST_LOG`, or `info` when it is unset; an unreadable `RUST_LOG` is
/// reported (after the subscriber is installed) and `info` used.
fn filter() -> (EnvFilter, Option<String>) {
    match std::env::var(EnvFilter::DEFAULT_ENV) {
        Err(_) => (EnvFilter::new("info"), None),
        Ok(text) => match EnvFilter::try_new(&text) {
            Ok(filter) => (filter, None),
            Err(e) => (
                EnvFilter::new("info"),
                Some(format!(
                    "RUST_LOG={text:?} is not a filter ({e}): using info"
                )),
            ),
        },
    }
}

/// Installs the subscriber of the `tributary` command: log lines on stderr in `format`,
/// filtered by `RUST_LOG`. A second call (or another subscriber already installed) is
/// ignored.
pub fn init(format: LogFormat) {
    let (filter, problem) = filter();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.event_format(Plain).try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    if installed.is_ok()
        && let Some(problem) = problem
    {
        tracing::warn!("{problem}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    #[test]
    fn text_lines_keep_the_plain_prefixes() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("info"))
            .with_writer(buffer.clone())
            .event_format(Plain)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!("writing output: disk full");
            tracing::warn!(batch = 7, "source batch set aside");
            tracing::info!("tributary: serving on http://127.0.0.1:1");
            tracing::debug!("not shown at info");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "error: writing output: disk full\n\
             warning: source batch set aside batch=7\n\
             tributary: serving on http://127.0.0.1:1\n"
        );
    }
}

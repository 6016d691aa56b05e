//! The `tributary` command: its flags ([`cli`]), `launch` ([`launch`]), and the
//! subcommands, each a call of the library.

mod allocator;
mod cli;
mod launch;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use crate::cli::{BenchCommand, CheckpointCommand, Cli, Command, GenArgs, RunArgs};
use clap::{CommandFactory, Parser};
use tributary::bench::{ThroughputSettings, throughput, throughput_table};
use tributary::job::{JobSpec, Pipeline};
use tributary::source::{GenReader, GenSpec};
use tributary::types::Fatal;
use tributary::window::parse_duration;

fn main() -> ExitCode {
    allocator::configure();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and --version on stdout, exit 0; a usage error on stderr, exit 1 (the exit
        // codes of docs/dataflow-spec.md: 1 is an error at start).
        Err(e) => {
            let _ = e.print();
            return match e.use_stderr() {
                true => ExitCode::FAILURE,
                false => ExitCode::SUCCESS,
            };
        }
    };
    tributary::logging::init(cli.log_format);
    let result = match cli.command {
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "tributary", &mut script);
            std::io::stdout()
                .write_all(&script)
                .map_err(|e| format!("completions: {e}"))
        }
        Command::Man { subcommand } => man(subcommand.as_deref()),
        Command::Run(args) => run_command(*args),
        Command::Gen(args) => gen_command(args),
        Command::Launch(args) => launch::launch(args),
        Command::Checkpoint(CheckpointCommand::Verify { dir }) => {
            return match tributary::checkpoint::verify::verify(&dir) {
                Ok(report) => {
                    print!("{}", report.text);
                    match report.is_damaged() {
                        true => ExitCode::from(tributary::checkpoint::EXIT_REFUSED as u8),
                        false => ExitCode::SUCCESS,
                    }
                }
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Checkpoint(CheckpointCommand::Inspect { dir }) => {
            tributary::checkpoint::inspect(&dir)
                .map(|text| print!("{text}"))
                .map_err(|e| e.to_string())
        }
        Command::Bench(BenchCommand::Checkpoint {
            rows,
            workers,
            dir,
            json,
        }) => tributary::bench::checkpoint(rows, workers, &dir)
            .map(|rows| report(&rows, json, |r| tributary::bench::checkpoint_table(r))),
        Command::Bench(BenchCommand::Incremental {
            records,
            features,
            batch,
            json,
        }) => {
            let rows = tributary::bench::incremental(records, features, &batch);
            report(&rows, json, |r| tributary::bench::incremental_table(r));
            Ok(())
        }
        Command::Bench(BenchCommand::Memory {
            rows,
            keys,
            features,
            window,
            every_ms,
            many_keys,
            many_keys_rows,
            json,
        }) => {
            let every = std::time::Duration::from_millis(every_ms);
            match many_keys {
                Some(many_keys) => tributary::bench::memory_many_keys(
                    many_keys,
                    &many_keys_rows,
                    features,
                    &window,
                    every,
                )
                .map(|run| report(&run, json, tributary::bench::many_keys_table)),
                None => tributary::bench::memory(rows, keys, features, &window, every)
                    .map(|run| report(&run, json, tributary::bench::memory_table)),
            }
        }
        Command::Bench(BenchCommand::Keys {
            rows,
            keys,
            features,
            window,
            workers,
            engine,
            max_rss_mib,
            json,
        }) => tributary::bench::keys(&tributary::bench::KeysSettings {
            rows,
            keys,
            features,
            window,
            workers,
            engine,
            max_rss_mib,
        })
        .map(|rows| report(&rows, json, |r| tributary::bench::keys_table(r))),
        Command::Bench(BenchCommand::Throughput(args)) => {
            let settings = ThroughputSettings {
                rows: args.rows,
                keys: args.keys,
                features: args.features,
                window: args.window,
                workers: args.workers,
                cluster: !args.no_cluster,
                csv: !args.no_csv,
                dir: args.dir,
            };
            throughput(&settings).map(|rows| report(&rows, args.json, |r| throughput_table(r)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the man page of `tributary` or of one of its subcommands, with the exit codes.
fn man(subcommand: Option<&str>) -> Result<(), String> {
    let command = Cli::command();
    let page = match subcommand {
        None => command,
        Some(name) => {
            let Some(sub) = command.find_subcommand(name) else {
                let names: Vec<&str> = command.get_subcommands().map(|c| c.get_name()).collect();
                return Err(format!(
                    "man: no subcommand {name:?} (one of {})",
                    names.join(", ")
                ));
            };
            sub.clone()
                .display_name(format!("tributary-{name}"))
                .bin_name(format!("tributary {name}"))
                .version(cli::VERSION)
        }
    };
    let man = clap_mangen::Man::new(page);
    let mut out = Vec::new();
    man.render(&mut out).map_err(|e| format!("man: {e}"))?;
    out.extend_from_slice(b".SH \"EXIT STATUS\"\n");
    for (code, meaning) in cli::EXIT_CODES {
        let meaning = meaning.replace('\\', "\\\\").replace('-', "\\-");
        out.extend_from_slice(format!(".TP\n\\fB{code}\\fR\n{meaning}\n").as_bytes());
    }
    std::io::stdout()
        .write_all(&out)
        .map_err(|e| format!("man: {e}"))
}

/// Prints a benchmark's result as pretty JSON, or as its human table.
fn report<T: serde::Serialize + ?Sized>(value: &T, json: bool, table: impl FnOnce(&T) -> String) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).expect("serializable")
        );
    } else {
        print!("{}", table(value));
    }
}

fn run_command(args: RunArgs) -> Result<(), String> {
    let spec = match &args.spec {
        Some(path) => JobSpec::from_file(path)?,
        None => JobSpec::default(),
    };
    let spec = spec.overridden_by(args.job.clone());
    let cluster = args.cluster(spec.workers);
    let mut job = spec.resolve()?;
    job.resume_from = args.resume_from;
    job.check()?;
    if !args.quiet && args.process == 0 {
        tracing::info!(
            "tributary: {} window={} lateness={}ms ridge={} workers={}x{} out={}",
            job.source,
            job.windows.window,
            job.windows.lateness,
            job.windows.solve.ridge,
            cluster.processes,
            cluster.workers,
            job.out.display()
        );
    }
    // The progress line is for a terminal: on by default only when stderr is one.
    let progress = !args.quiet && (args.progress || std::io::stderr().is_terminal());
    let summary = Pipeline::new(job, exit_with_code)
        .cluster(cluster)
        .progress(progress)
        .run()?;
    tracing::info!("{}", summary.line());
    Ok(())
}

/// The run's fatal-error hook ([`tributary::types::OnFatal`]): the library logged the
/// error where it happened; the command ends the process with the error's exit code (the
/// table of [`cli::EXIT_CODES`]). The only place below `main` that ends the process.
fn exit_with_code(fatal: Fatal) -> ! {
    std::process::exit(fatal.code)
}

fn gen_command(args: GenArgs) -> Result<(), String> {
    let spec = GenSpec {
        rows: args.rows,
        keys: args.keys,
        features: args.features,
        seed: args.seed,
        disorder: parse_duration(&args.disorder)?,
        step: parse_duration(&args.step)?,
        start: args.start,
        ..GenSpec::default()
    };
    spec.validate()?;
    let mut out = tributary::sink::open_lines(&args.out, false)
        .map_err(|e| format!("{}: {e}", args.out.display()))?;
    let mut line = String::from("ts,key");
    for i in 0..spec.features {
        line.push_str(&format!(",x{i}"));
    }
    line.push_str(",y\n");
    let mut result = out.write_all(line.as_bytes());
    let mut reader = GenReader::new(&spec, 0, 1);
    reader.generate(0, spec.rows, |r| {
        if result.is_err() {
            return;
        }
        use std::fmt::Write as _;
        line.clear();
        let _ = write!(line, "{},{}", r.time, r.key);
        for &v in r.z {
            match args.digits {
                Some(digits) => {
                    let _ = write!(line, ",{}", significant(v, digits));
                }
                None => {
                    let _ = write!(line, ",{v}");
                }
            }
        }
        line.push('\n');
        result = out.write_all(line.as_bytes());
    });
    result
        .and_then(|()| out.flush())
        .map_err(|e| format!("{}: {e}", args.out.display()))
}

/// `v` rounded to `digits` significant digits, written as a plain decimal (no exponent).
fn significant(v: f64, digits: u32) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    // Digits before the point: floor(log10 |v|) + 1, which may be zero or negative.
    let before = v.abs().log10().floor() as i32 + 1;
    let after = (digits as i32 - before).max(0) as usize;
    format!("{v:.after$}")
}

#[cfg(test)]
mod tests {
    use super::significant;

    #[test]
    fn significant_digits_in_plain_decimals() {
        assert_eq!(significant(-1.086171107, 9), "-1.08617111");
        assert_eq!(significant(0.04294550331, 9), "0.0429455033");
        assert_eq!(significant(0.000123456, 3), "0.000123");
        assert_eq!(significant(12.5, 2), "12");
        assert_eq!(significant(123456.7, 3), "123457");
        assert_eq!(significant(0.0, 9), "0");
        for (v, digits) in [(2.71, 4), (-2.5e-7, 9), (9.99999, 2)] {
            let text = significant(v, digits);
            let back: f64 = text.parse().unwrap();
            assert!(
                (back - v).abs() <= v.abs() * 10f64.powi(1 - digits as i32),
                "{text}"
            );
        }
    }
}

//! `routera-emulator`: the Routera emulator of `routera-auth-test`, run from
//! a shell, for programs that are not Rust tests (or not Rust at all).
//!
//! It serves the token endpoint and the protected API on `127.0.0.1`
//! (port 7357 by default) with the control API on, prints the URLs and the
//! `export` lines a program needs, and serves until Ctrl-C or SIGTERM. See
//! `routera-emulator --help`.

#![forbid(unsafe_code)]

use std::fmt;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use routera_auth_test::{Emulator, Fault};

/// The port unless `--port` says otherwise.
const DEFAULT_PORT: u16 = 7357;
/// The token lifetime unless `--expires-in` says otherwise, in seconds.
const DEFAULT_EXPIRES_IN: u64 = 3600;
/// The client unless `--client` says otherwise.
const DEFAULT_CLIENT: (&str, &str) = ("routera-test-client", "routera-test-secret");
/// Where `--https` writes the CA certificate unless `--ca-file` says
/// otherwise.
const DEFAULT_CA_FILE: &str = "routera-emulator-ca.pem";
/// The statuses `--fail` accepts: final answers.
const STATUSES: std::ops::RangeInclusive<u16> = 200..=599;

/// The usage line, printed after an error in the command line.
const USAGE: &str = "usage: routera-emulator [--port PORT] [--client ID:SECRET]... \
[--expires-in SECONDS] [--https [--ca-file PATH]] [--fail STATUS [--retry-after SECONDS] | \
--slow MS] [--fail-times N] [-h | --help]";

/// The text of `--help`.
const HELP: &str = "\
routera-emulator: a Routera server for local development and tests, on 127.0.0.1.
It issues OAuth 2.0 client-credentials tokens and serves a protected API that
accepts only those tokens. It is a test tool, not a hardened server.

usage: routera-emulator [OPTIONS]

Options:
  --port PORT            listen on 127.0.0.1:PORT (default 7357; 0: any free port)
  --client ID:SECRET     accept this client; repeatable, the first one goes in
                         the printed exports (default
                         routera-test-client:routera-test-secret)
  --expires-in SECONDS   lifetime of the tokens issued (default 3600)
  --https                serve HTTPS with a certificate from a CA generated at
                         start (it lives in memory only)
  --ca-file PATH         with --https, where to write the CA certificate, PEM
                         (default routera-emulator-ca.pem)
  --fail STATUS          the token endpoint answers STATUS (200 to 599), no body
  --retry-after SECONDS  with --fail: with Retry-After: SECONDS and a JSON error
  --slow MS              the token endpoint answers MS milliseconds late
  --fail-times N         the --fail or --slow fault applies to the first N token
                         requests only (default: all, until cleared)
  -h, --help             print this help

On start it prints the URLs and the export lines a program needs
(ROUTERA_TOKEN_URL, ROUTERA_CLIENT_ID, ROUTERA_CLIENT_SECRET, ROUTERA_API_URL,
and SSL_CERT_FILE with --https). It serves until Ctrl-C or SIGTERM.

It is a plain OAuth 2.0 server:
  curl -s -X POST http://127.0.0.1:7357/oauth2/token -d grant_type=client_credentials -d client_id=routera-test-client -d client_secret=routera-test-secret
  curl -H \"Authorization: Bearer <access_token>\" http://127.0.0.1:7357/v1/ping

Control API, while it runs:
  curl -X POST http://127.0.0.1:7357/emulator/revoke
      revoke every token issued so far
  curl -X POST http://127.0.0.1:7357/emulator/fault -d status=503 -d retry_after=5 -d times=2
      the next 2 token requests get a 503 with Retry-After: 5 (without
      times=, until cleared; retry_after= is optional)
  curl -X POST http://127.0.0.1:7357/emulator/fault -d delay_ms=2000
      token requests are answered 2 seconds late (times= works here too)
  curl -X DELETE http://127.0.0.1:7357/emulator/fault
      back to normal
";

fn main() -> ExitCode {
    match Command::parse(std::env::args().skip(1)) {
        Ok(Command::Help) => {
            print_out(HELP);
            ExitCode::SUCCESS
        }
        Ok(Command::Run(options)) => run(&options),
        Err(error) => {
            print_err(&format!("routera-emulator: {error}\n{USAGE}\n"));
            ExitCode::from(2)
        }
    }
}

/// Starts the emulator, prints where it is, serves until a stop signal.
fn run(options: &Options) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&format!("cannot start the Tokio runtime: {error}")),
    };
    match runtime.block_on(serve(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(&message),
    }
}

/// Prints `message` on stderr as a failure; exit code 1.
fn fail(message: &str) -> ExitCode {
    print_err(&format!("routera-emulator: {message}\n"));
    ExitCode::FAILURE
}

/// The life of the emulator: start, banner, wait for a signal, stop.
async fn serve(options: &Options) -> Result<(), String> {
    // Listen for the signals before telling anyone where the emulator is,
    // so that a signal sent right after the banner stops it cleanly.
    let stop = StopSignals::listen()
        .map_err(|error| format!("cannot listen for Ctrl-C and SIGTERM: {error}"))?;

    let mut builder = Emulator::builder()
        .port(options.port)
        .expires_in(Duration::from_secs(options.expires_in))
        .control_api();
    for (id, secret) in &options.clients {
        builder = builder.client(id.as_str(), secret.as_str());
    }
    if options.ca_file.is_some() {
        builder = builder.https();
    }
    let emulator = builder.start().await.map_err(|error| {
        let hint = if error.kind() == io::ErrorKind::AddrInUse {
            "; choose another port with --port, or --port 0 for any free one"
        } else {
            ""
        };
        format!("cannot listen on 127.0.0.1:{}: {error}{hint}", options.port)
    })?;
    let ca_file = match (&options.ca_file, emulator.ca_pem()) {
        (Some(path), Some(pem)) => Some(write_ca(path, pem)?),
        _ => None,
    };
    if let Some(fault) = &options.fault {
        match fault.times {
            Some(times) => emulator.inject_times(fault.to_fault(), times),
            None => emulator.inject(fault.to_fault()),
        }
    }

    print_out(&banner(&emulator, options, ca_file.as_deref()));
    stop.wait().await;
    drop(emulator);
    print_out("stopped\n");
    Ok(())
}

/// Writes the CA certificate to `path`; its absolute path.
fn write_ca(path: &Path, pem: &str) -> Result<PathBuf, String> {
    std::fs::write(path, pem).map_err(|error| {
        format!(
            "cannot write the CA certificate to {}: {error}",
            path.display()
        )
    })?;
    std::path::absolute(path).map_err(|error| {
        format!(
            "cannot tell the absolute path of {}: {error}",
            path.display()
        )
    })
}

/// What the emulator prints once it listens: where it is, and the lines to
/// paste into the shell of a program that should use it.
fn banner(emulator: &Emulator, options: &Options, ca_file: Option<&Path>) -> String {
    let credentials = emulator.credentials();
    let mut lines = vec![
        format!(
            "Routera emulator on {} (Ctrl-C stops it)",
            emulator.base_url()
        ),
        format!("  token endpoint: {}", emulator.token_url()),
        format!("  protected API:  {}", emulator.resource_url()),
        "  control API:    POST /emulator/revoke, POST /emulator/fault, DELETE /emulator/fault"
            .to_owned(),
    ];
    let others: Vec<String> = options
        .clients
        .iter()
        .skip(1)
        .map(|(id, secret)| format!("{id}:{secret}"))
        .collect();
    if !others.is_empty() {
        lines.push(format!("  other clients:  {}", others.join(", ")));
    }
    if let Some(fault) = &options.fault {
        lines.push(format!("  fault:          {fault}"));
    }
    lines.extend([
        format!(
            "export ROUTERA_TOKEN_URL={}",
            shell_quote(&emulator.token_url())
        ),
        format!(
            "export ROUTERA_CLIENT_ID={}",
            shell_quote(credentials.client_id())
        ),
        format!(
            "export ROUTERA_CLIENT_SECRET={}",
            shell_quote(credentials.client_secret())
        ),
        format!(
            "export ROUTERA_API_URL={}",
            shell_quote(&emulator.resource_url())
        ),
    ]);
    if let Some(ca_file) = ca_file {
        lines.push(
            "# SSL_CERT_FILE makes the program trust only this emulator's CA (no public CA)"
                .to_owned(),
        );
        lines.push(format!(
            "export SSL_CERT_FILE={}",
            shell_quote(&ca_file.to_string_lossy())
        ));
    }
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// `value` as one shell word: as it is when it holds only characters no
/// shell treats specially, in single quotes otherwise.
fn shell_quote(value: &str) -> String {
    let plain = !value.is_empty()
        && value.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':' | '@' | '+' | ',')
        });
    if plain {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

/// Writes `text` to stdout and flushes it. A closed stdout is no reason to
/// stop serving: errors are ignored.
fn print_out(text: &str) {
    let mut stdout = io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// Writes `text` to stderr; errors are ignored.
fn print_err(text: &str) {
    let _ = io::stderr().lock().write_all(text.as_bytes());
}

/// Ctrl-C (SIGINT) and, on Unix, SIGTERM, listened for from creation on.
struct StopSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Starts listening; a signal arriving from now on is not lost.
    #[cfg(unix)]
    fn listen() -> io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Ctrl-C is listened for when [`StopSignals::wait`] runs.
    #[cfg(not(unix))]
    fn listen() -> io::Result<Self> {
        Ok(Self {})
    }

    /// Resolves on the first stop signal.
    #[cfg(unix)]
    async fn wait(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }

    /// Resolves on Ctrl-C (or if it cannot be listened for).
    #[cfg(not(unix))]
    async fn wait(self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    /// `-h` or `--help`.
    Help,
    /// Run an emulator.
    Run(Options),
}

/// How to run the emulator.
#[derive(Debug, PartialEq, Eq)]
struct Options {
    port: u16,
    /// At least one; the first goes in the exports.
    clients: Vec<(String, String)>,
    /// Token lifetime, seconds.
    expires_in: u64,
    /// `Some` with `--https`: where to write the CA certificate.
    ca_file: Option<PathBuf>,
    fault: Option<StartFault>,
}

/// The fault of `--fail` or `--slow`, and `--fail-times`.
#[derive(Debug, PartialEq, Eq)]
struct StartFault {
    kind: StartFaultKind,
    /// `None`: every token request.
    times: Option<u64>,
}

/// `--fail` (with `--retry-after`) or `--slow`.
#[derive(Debug, PartialEq, Eq)]
enum StartFaultKind {
    Fail {
        status: u16,
        retry_after: Option<u64>,
    },
    Slow {
        ms: u64,
    },
}

impl StartFault {
    /// The emulator's [`Fault`] for it.
    fn to_fault(&self) -> Fault {
        match self.kind {
            StartFaultKind::Fail {
                status,
                retry_after: None,
            } => Fault::status(status),
            StartFaultKind::Fail {
                status,
                retry_after: Some(seconds),
            } => Fault::retry_after(status, seconds),
            StartFaultKind::Slow { ms } => Fault::slow(Duration::from_millis(ms)),
        }
    }
}

impl fmt::Display for StartFault {
    /// How the banner describes the fault.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            StartFaultKind::Fail {
                status,
                retry_after: None,
            } => write!(f, "token requests get a {status}")?,
            StartFaultKind::Fail {
                status,
                retry_after: Some(seconds),
            } => write!(
                f,
                "token requests get a {status} with Retry-After: {seconds}"
            )?,
            StartFaultKind::Slow { ms } => write!(f, "token requests are answered {ms} ms late")?,
        }
        match self.times {
            Some(1) => f.write_str(", the first one only"),
            Some(times) => write!(f, ", the first {times} only"),
            None => f.write_str(", until DELETE /emulator/fault"),
        }
    }
}

/// What was wrong in the command line, in words.
#[derive(Debug, PartialEq, Eq)]
struct UsageError(String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Command {
    /// Reads the arguments after the program name.
    fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, UsageError> {
        let mut args = args.into_iter();
        let mut port = None;
        let mut clients = Vec::new();
        let mut expires_in = None;
        let mut https = false;
        let mut ca_file = None;
        let mut fail = None;
        let mut retry_after = None;
        let mut slow = None;
        let mut fail_times = None;

        while let Some(arg) = args.next() {
            // `--flag=value` is `--flag value`.
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => {
                    (flag.to_owned(), Some(value.to_owned()))
                }
                _ => (arg, None),
            };
            let mut value = |what: &str| match inline.clone().or_else(|| args.next()) {
                Some(value) => Ok(value),
                None => Err(UsageError(format!("{flag} needs a value: {what}"))),
            };
            match flag.as_str() {
                "-h" | "--help" => return Ok(Self::Help),
                "--port" => {
                    let given = value("a port number, 0 for any free port")?;
                    let parsed = given.parse::<u16>().map_err(|_| {
                        UsageError(format!(
                            "--port needs a port number from 0 to 65535, not `{given}`"
                        ))
                    })?;
                    set_once(&mut port, parsed, "--port")?;
                }
                "--client" => {
                    let given = value("ID:SECRET")?;
                    let client = match given.split_once(':') {
                        Some((id, secret)) if !id.is_empty() && !secret.is_empty() => {
                            (id.to_owned(), secret.to_owned())
                        }
                        _ => {
                            return Err(UsageError(
                                "--client needs ID:SECRET, a client id and its secret, \
                                 neither empty, separated by a colon"
                                    .to_owned(),
                            ));
                        }
                    };
                    if clients.iter().any(|(id, _)| *id == client.0) {
                        return Err(UsageError(format!("--client {} is given twice", client.0)));
                    }
                    clients.push(client);
                }
                "--expires-in" => {
                    let given = value("the token lifetime in seconds")?;
                    let parsed = positive(&given, "--expires-in", "seconds")?;
                    set_once(&mut expires_in, parsed, "--expires-in")?;
                }
                "--https" if inline.is_some() => {
                    return Err(UsageError("--https takes no value".to_owned()));
                }
                "--https" => {
                    if https {
                        return Err(UsageError("--https is given twice".to_owned()));
                    }
                    https = true;
                }
                "--ca-file" => {
                    let given = value("the path of the CA certificate file to write")?;
                    if given.is_empty() {
                        return Err(UsageError("--ca-file needs a path, not ``".to_owned()));
                    }
                    set_once(&mut ca_file, PathBuf::from(given), "--ca-file")?;
                }
                "--fail" => {
                    let given = value("an HTTP status from 200 to 599")?;
                    let parsed = match given.parse::<u16>() {
                        Ok(status) if STATUSES.contains(&status) => status,
                        _ => {
                            return Err(UsageError(format!(
                                "--fail needs an HTTP status from 200 to 599, not `{given}`"
                            )));
                        }
                    };
                    set_once(&mut fail, parsed, "--fail")?;
                }
                "--retry-after" => {
                    let given = value("seconds")?;
                    let parsed = given.parse::<u64>().map_err(|_| {
                        UsageError(format!(
                            "--retry-after needs a whole number of seconds, not `{given}`"
                        ))
                    })?;
                    set_once(&mut retry_after, parsed, "--retry-after")?;
                }
                "--slow" => {
                    let given = value("milliseconds")?;
                    let parsed = given.parse::<u64>().map_err(|_| {
                        UsageError(format!(
                            "--slow needs a whole number of milliseconds, not `{given}`"
                        ))
                    })?;
                    set_once(&mut slow, parsed, "--slow")?;
                }
                "--fail-times" => {
                    let given = value("how many token requests the fault applies to")?;
                    let parsed = positive(&given, "--fail-times", "token requests")?;
                    set_once(&mut fail_times, parsed, "--fail-times")?;
                }
                other if other.starts_with('-') => {
                    return Err(UsageError(format!("unknown option `{other}`")));
                }
                other => {
                    return Err(UsageError(format!(
                        "unexpected argument `{other}`: every option starts with --"
                    )));
                }
            }
        }

        if ca_file.is_some() && !https {
            return Err(UsageError("--ca-file goes with --https".to_owned()));
        }
        if retry_after.is_some() && fail.is_none() {
            return Err(UsageError("--retry-after goes with --fail".to_owned()));
        }
        let kind = match (fail, slow) {
            (Some(_), Some(_)) => {
                return Err(UsageError(
                    "--fail and --slow cannot be used together: one fault at a time".to_owned(),
                ));
            }
            (Some(status), None) => Some(StartFaultKind::Fail {
                status,
                retry_after,
            }),
            (None, Some(ms)) => Some(StartFaultKind::Slow { ms }),
            (None, None) => None,
        };
        let fault = match (kind, fail_times) {
            (Some(kind), times) => Some(StartFault { kind, times }),
            (None, Some(_)) => {
                return Err(UsageError(
                    "--fail-times goes with --fail or --slow".to_owned(),
                ));
            }
            (None, None) => None,
        };
        if clients.is_empty() {
            let (id, secret) = DEFAULT_CLIENT;
            clients.push((id.to_owned(), secret.to_owned()));
        }
        Ok(Self::Run(Options {
            port: port.unwrap_or(DEFAULT_PORT),
            clients,
            expires_in: expires_in.unwrap_or(DEFAULT_EXPIRES_IN),
            ca_file: https.then(|| ca_file.unwrap_or_else(|| PathBuf::from(DEFAULT_CA_FILE))),
            fault,
        }))
    }
}

/// Stores the value of a flag that may be given once.
fn set_once<T>(slot: &mut Option<T>, value: T, flag: &str) -> Result<(), UsageError> {
    if slot.is_some() {
        return Err(UsageError(format!("{flag} is given twice")));
    }
    *slot = Some(value);
    Ok(())
}

/// A whole number of at least 1.
fn positive(given: &str, flag: &str, unit: &str) -> Result<u64, UsageError> {
    match given.parse::<u64>() {
        Ok(value) if value > 0 => Ok(value),
        _ => Err(UsageError(format!(
            "{flag} needs a whole number of {unit}, at least 1, not `{given}`"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, UsageError> {
        Command::parse(args.iter().map(|arg| (*arg).to_owned()))
    }

    fn options(args: &[&str]) -> Options {
        match parse(args) {
            Ok(Command::Run(options)) => options,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn error(args: &[&str]) -> String {
        match parse(args) {
            Err(UsageError(message)) => message,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn no_flag_is_the_documented_defaults() {
        let defaults = options(&[]);
        assert_eq!(
            defaults,
            Options {
                port: 7357,
                clients: vec![(
                    "routera-test-client".to_owned(),
                    "routera-test-secret".to_owned()
                )],
                expires_in: 3600,
                ca_file: None,
                fault: None,
            }
        );
        assert_eq!(
            options(&["--https"]).ca_file,
            Some(PathBuf::from("routera-emulator-ca.pem"))
        );
    }

    #[test]
    fn every_flag_is_read_with_a_space_or_an_equals_sign() {
        let parsed = options(&[
            "--port",
            "0",
            "--client",
            "a:b:c",
            "--client=d:e",
            "--expires-in=60",
            "--https",
            "--ca-file",
            "/tmp/ca.pem",
            "--fail",
            "503",
            "--retry-after=5",
            "--fail-times",
            "2",
        ]);
        assert_eq!(
            parsed,
            Options {
                port: 0,
                clients: vec![
                    ("a".to_owned(), "b:c".to_owned()),
                    ("d".to_owned(), "e".to_owned())
                ],
                expires_in: 60,
                ca_file: Some(PathBuf::from("/tmp/ca.pem")),
                fault: Some(StartFault {
                    kind: StartFaultKind::Fail {
                        status: 503,
                        retry_after: Some(5)
                    },
                    times: Some(2),
                }),
            }
        );
        let slow = options(&["--slow", "250"]).fault;
        assert_eq!(
            slow,
            Some(StartFault {
                kind: StartFaultKind::Slow { ms: 250 },
                times: None
            })
        );
        assert_eq!(parse(&["--port", "x", "--help"]).ok(), None);
        assert_eq!(parse(&["--port", "1", "-h"]), Ok(Command::Help));
        assert_eq!(parse(&["--help", "--bogus"]), Ok(Command::Help));
    }

    #[test]
    fn a_bad_command_line_says_what_was_wrong() {
        let cases: &[(&[&str], &str)] = &[
            (&["--bogus"], "unknown option `--bogus`"),
            (&["-p", "1"], "unknown option `-p`"),
            (&["7357"], "unexpected argument `7357`"),
            (&["--port"], "--port needs a value"),
            (&["--port", "65536"], "from 0 to 65535, not `65536`"),
            (&["--port", "-1"], "not `-1`"),
            (&["--port", "1", "--port=2"], "--port is given twice"),
            (&["--client", "nocolon"], "--client needs ID:SECRET"),
            (&["--client", ":secret"], "neither empty"),
            (&["--client", "id:"], "neither empty"),
            (
                &["--client", "a:b", "--client", "a:c"],
                "--client a is given twice",
            ),
            (&["--expires-in", "0"], "at least 1, not `0`"),
            (&["--expires-in", "1h"], "not `1h`"),
            (&["--https=yes"], "--https takes no value"),
            (&["--https", "--https"], "--https is given twice"),
            (&["--ca-file", "ca.pem"], "--ca-file goes with --https"),
            (&["--https", "--ca-file="], "--ca-file needs a path"),
            (&["--fail", "99"], "from 200 to 599, not `99`"),
            (&["--fail", "600"], "not `600`"),
            (&["--retry-after", "5"], "--retry-after goes with --fail"),
            (&["--fail", "503", "--retry-after", "soon"], "not `soon`"),
            (&["--slow", "1.5"], "milliseconds, not `1.5`"),
            (
                &["--fail", "503", "--slow", "10"],
                "cannot be used together",
            ),
            (
                &["--fail-times", "2"],
                "--fail-times goes with --fail or --slow",
            ),
            (
                &["--fail", "503", "--fail-times", "0"],
                "at least 1, not `0`",
            ),
        ];
        for (args, expected) in cases {
            let message = error(args);
            assert!(message.contains(expected), "{args:?}: {message}");
            assert!(!message.contains('\n'), "{args:?}: {message}");
        }
    }

    #[test]
    fn the_start_fault_is_the_emulator_fault_it_names() {
        let fault = StartFault {
            kind: StartFaultKind::Fail {
                status: 503,
                retry_after: Some(5),
            },
            times: Some(2),
        };
        assert_eq!(
            fault.to_string(),
            "token requests get a 503 with Retry-After: 5, the first 2 only"
        );
        let Fault::Respond {
            status, headers, ..
        } = fault.to_fault()
        else {
            panic!("{:?}", fault.to_fault());
        };
        assert_eq!(status, 503);
        assert_eq!(headers[http::header::RETRY_AFTER], "5");

        let fault = StartFault {
            kind: StartFaultKind::Slow { ms: 250 },
            times: None,
        };
        assert_eq!(
            fault.to_string(),
            "token requests are answered 250 ms late, until DELETE /emulator/fault"
        );
        assert!(matches!(
            fault.to_fault(),
            Fault::Slow { delay, .. } if delay == Duration::from_millis(250)
        ));
    }

    #[test]
    fn exports_are_quoted_for_the_shell_only_when_needed() {
        assert_eq!(
            shell_quote("http://127.0.0.1:7357/oauth2/token"),
            "http://127.0.0.1:7357/oauth2/token"
        );
        assert_eq!(shell_quote("routera-test-client"), "routera-test-client");
        assert_eq!(shell_quote("/tmp/my dir/ca.pem"), "'/tmp/my dir/ca.pem'");
        assert_eq!(shell_quote("it's$HOME"), r"'it'\''s$HOME'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn the_usage_line_and_the_help_agree() {
        assert!(USAGE.starts_with("usage: routera-emulator "));
        assert!(!USAGE.contains('\n'));
        for flag in [
            "--port",
            "--client",
            "--expires-in",
            "--https",
            "--ca-file",
            "--fail",
            "--retry-after",
            "--slow",
            "--fail-times",
            "--help",
        ] {
            assert!(USAGE.contains(flag), "{flag}");
            assert!(
                HELP.contains(&format!("  {flag}")) || flag == "--help",
                "{flag}"
            );
        }
        assert!(HELP.contains("-h, --help"));
    }
}

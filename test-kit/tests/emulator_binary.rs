//! The `routera-emulator` binary as a process: its command line, what it
//! prints, its HTTP API and control API, and how it stops.
//!
//! Every wait is bounded by [`WAIT`]: a test that waits longer fails with
//! what it was waiting for. The processes are killed if a test fails.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use routera_auth::{ClientCredentials, HttpTokenExchange, ReqwestService, Token, TokenError};
use routera_auth::{TokenErrorKind, TokenRequest};
use tower::ServiceExt as _;

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_routera-emulator");
/// The longest any step may take: generous, for a loaded machine.
const WAIT: Duration = Duration::from_secs(30);

/// A running `routera-emulator`: its stdout line by line, its exit status
/// and stderr once it exits. Dropping it kills the process if it still
/// runs.
struct Process {
    pid: u32,
    stdout: mpsc::Receiver<String>,
    exit: mpsc::Receiver<(ExitStatus, String)>,
    exited: bool,
}

/// How a process ended: its status, the rest of its stdout, its stderr.
struct Exit {
    status: ExitStatus,
    stdout: Vec<String>,
    stderr: String,
}

impl Process {
    /// Starts the binary with `args`, in `dir` if given.
    fn spawn(args: &[&str], dir: Option<&Path>) -> Self {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        let mut child = command.spawn().expect("routera-emulator could not start");
        let pid = child.id();

        let stdout = child.stdout.take().expect("stdout is piped");
        let (line_sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line_sender.send(line).is_err() {
                    break;
                }
            }
        });

        let mut stderr = child.stderr.take().expect("stderr is piped");
        let (exit_sender, exit) = mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            let status = child.wait().expect("waiting for routera-emulator failed");
            let _ = exit_sender.send((status, text));
        });

        Self {
            pid,
            stdout: lines,
            exit,
            exited: false,
        }
    }

    /// The next line of stdout, failing the test after [`WAIT`].
    fn next_line(&self, waiting_for: &str) -> String {
        match self.stdout.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                panic!("no line on stdout in {WAIT:?} while waiting for {waiting_for}")
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("stdout closed while waiting for {waiting_for}")
            }
        }
    }

    /// Reads stdout up to and including the line starting with `last`.
    fn read_until(&self, last: &str) -> Banner {
        let mut lines = Vec::new();
        loop {
            let line = self.next_line(&format!("a line starting with `{last}`"));
            let done = line.starts_with(last);
            lines.push(line);
            if done {
                return Banner::new(lines);
            }
        }
    }

    /// Sends `signal` (`INT`, `TERM`) with `kill`.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid.to_string()])
            .status()
            .expect("`kill` could not run");
        assert!(status.success(), "kill -{signal} {}: {status}", self.pid);
    }

    /// Waits for the process to exit, failing the test after [`WAIT`].
    fn wait(mut self) -> Exit {
        let (status, stderr) = self
            .exit
            .recv_timeout(WAIT)
            .unwrap_or_else(|error| panic!("routera-emulator did not exit in {WAIT:?}: {error}"));
        self.exited = true;
        // The process is gone: the rest of stdout is there, up to its end.
        let mut stdout = Vec::new();
        loop {
            match self.stdout.recv_timeout(WAIT) {
                Ok(line) => stdout.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("stdout still open after the exit"),
            }
        }
        Exit {
            status,
            stdout,
            stderr,
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.exited {
            return;
        }
        // Still running (the test failed): kill it and reap it. The waiting
        // thread has not reaped it, so the pid is still this process's.
        if self.exit.try_recv().is_err() {
            let _ = Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .status();
            let _ = self.exit.recv_timeout(WAIT);
        }
    }
}

/// What the emulator printed on start: the lines, and the exports.
struct Banner {
    lines: Vec<String>,
    exports: HashMap<String, String>,
}

impl Banner {
    fn new(lines: Vec<String>) -> Self {
        let exports = lines
            .iter()
            .filter_map(|line| line.strip_prefix("export "))
            .filter_map(|export| export.split_once('='))
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect();
        Self { lines, exports }
    }

    fn export(&self, name: &str) -> &str {
        self.exports
            .get(name)
            .unwrap_or_else(|| panic!("no `export {name}=` in {:#?}", self.lines))
    }

    /// `http://127.0.0.1:PORT` or `https://…`, from the token URL.
    fn base_url(&self) -> &str {
        let token_url = self.export("ROUTERA_TOKEN_URL");
        token_url
            .strip_suffix("/oauth2/token")
            .unwrap_or_else(|| panic!("not a token URL: {token_url}"))
    }
}

/// A reqwest client that stays on loopback (no proxy) and follows no
/// redirect; `ca_pem`, if given, is the only CA it trusts.
fn client(ca_pem: Option<&str>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(WAIT);
    if let Some(pem) = ca_pem {
        let ca = reqwest::Certificate::from_pem(pem.as_bytes()).unwrap();
        builder = builder.tls_certs_only([ca]);
    }
    builder.build().unwrap()
}

/// A token from the emulator's token endpoint, through the library's
/// exchange.
async fn exchange(
    client: &reqwest::Client,
    banner: &Banner,
    credentials: ClientCredentials,
) -> Result<Token, TokenError> {
    let exchange = HttpTokenExchange::new(ReqwestService::new(client.clone()))
        .with_token_url(banner.export("ROUTERA_TOKEN_URL"))
        .unwrap();
    let call = exchange.oneshot(TokenRequest::new(credentials));
    tokio::time::timeout(WAIT, call)
        .await
        .unwrap_or_else(|_| panic!("no answer from the token endpoint in {WAIT:?}"))
}

/// The credentials of the exports.
fn exported_credentials(banner: &Banner) -> ClientCredentials {
    ClientCredentials::new(
        banner.export("ROUTERA_CLIENT_ID"),
        banner.export("ROUTERA_CLIENT_SECRET"),
    )
}

/// The status of `/v1/ping` with this token.
async fn ping(client: &reqwest::Client, banner: &Banner, token: &Token) -> StatusCode {
    let request = client
        .get(banner.export("ROUTERA_API_URL"))
        .bearer_auth(token.access_token().secret())
        .send();
    tokio::time::timeout(WAIT, request)
        .await
        .unwrap_or_else(|_| panic!("no answer from /v1/ping in {WAIT:?}"))
        .unwrap()
        .status()
}

/// A request to the control API: its status and body.
async fn control(
    client: &reqwest::Client,
    banner: &Banner,
    method: reqwest::Method,
    path: &str,
    form: &str,
) -> (StatusCode, String) {
    let mut request = client.request(method, format!("{}{path}", banner.base_url()));
    if !form.is_empty() {
        request = request
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_owned());
    }
    let response = tokio::time::timeout(WAIT, request.send())
        .await
        .unwrap_or_else(|_| panic!("no answer from {path} in {WAIT:?}"))
        .unwrap();
    let status = response.status();
    (status, response.text().await.unwrap())
}

/// A file name under the test's temporary directory, unique to this run.
fn temp_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("routera-emulator-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Fails unless `exit` is a clean stop: status 0, `stopped`, no stderr.
fn assert_stopped(exit: &Exit) {
    assert_eq!(exit.status.code(), Some(0), "stderr: {}", exit.stderr);
    assert_eq!(exit.stdout, ["stopped"], "stderr: {}", exit.stderr);
    assert_eq!(exit.stderr, "");
}

#[tokio::test]
async fn serves_tokens_faults_and_revocation_until_sigint() {
    let process = Process::spawn(&["--port", "0"], None);
    let banner = process.read_until("export ROUTERA_API_URL=");

    let base = banner.base_url().to_owned();
    let port = base
        .strip_prefix("http://127.0.0.1:")
        .unwrap_or_else(|| panic!("not a loopback HTTP URL: {base}"));
    assert_ne!(port.parse::<u16>().unwrap(), 0);
    assert_eq!(
        banner.lines,
        [
            format!("Routera emulator on {base} (Ctrl-C stops it)"),
            format!("  token endpoint: {base}/oauth2/token"),
            format!("  protected API:  {base}/v1/ping"),
            "  control API:    POST /emulator/revoke, POST /emulator/fault, DELETE /emulator/fault"
                .to_owned(),
            format!("export ROUTERA_TOKEN_URL={base}/oauth2/token"),
            "export ROUTERA_CLIENT_ID=routera-test-client".to_owned(),
            "export ROUTERA_CLIENT_SECRET=routera-test-secret".to_owned(),
            format!("export ROUTERA_API_URL={base}/v1/ping"),
        ]
    );

    let client = client(None);
    let credentials = exported_credentials(&banner);
    let first = exchange(&client, &banner, credentials.clone())
        .await
        .unwrap();
    assert_eq!(first.expires_in(), Some(Duration::from_secs(3600)));
    assert_eq!(ping(&client, &banner, &first).await, StatusCode::OK);

    // A fault for the next two token requests.
    let form = "status=503&retry_after=5&times=2";
    let (status, body) = control(
        &client,
        &banner,
        reqwest::Method::POST,
        "/emulator/fault",
        form,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let error = exchange(&client, &banner, credentials.clone())
        .await
        .unwrap_err();
    assert_eq!(
        error.status(),
        Some(StatusCode::SERVICE_UNAVAILABLE),
        "{error}"
    );
    assert_eq!(error.retry_after(), Some(Duration::from_secs(5)), "{error}");

    // Cleared before its second use.
    let (status, _) = control(
        &client,
        &banner,
        reqwest::Method::DELETE,
        "/emulator/fault",
        "",
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let second = exchange(&client, &banner, credentials.clone())
        .await
        .unwrap();

    // A bad form says what to send.
    let (status, body) = control(
        &client,
        &banner,
        reqwest::Method::POST,
        "/emulator/fault",
        "status=5xx",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"], "invalid_request", "{json}");
    let description = json["error_description"].as_str().unwrap();
    assert!(description.contains("`5xx`"), "{description}");
    assert!(
        description.contains("status=503&retry_after=5&times=2"),
        "{description}"
    );

    // A slow answer, once.
    let (status, _) = control(
        &client,
        &banner,
        reqwest::Method::POST,
        "/emulator/fault",
        "delay_ms=300&times=1",
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let start = Instant::now();
    let third = exchange(&client, &banner, credentials.clone())
        .await
        .unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );

    // Revoking: every token so far is refused, new ones work.
    let (status, _) = control(
        &client,
        &banner,
        reqwest::Method::POST,
        "/emulator/revoke",
        "",
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for token in [&first, &second, &third] {
        assert_eq!(
            ping(&client, &banner, token).await,
            StatusCode::UNAUTHORIZED
        );
    }
    let fourth = exchange(&client, &banner, credentials).await.unwrap();
    assert_eq!(ping(&client, &banner, &fourth).await, StatusCode::OK);

    process.signal("INT");
    assert_stopped(&process.wait());
}

#[tokio::test]
async fn start_flags_set_the_clients_the_lifetime_and_a_fault() {
    let process = Process::spawn(
        &[
            "--port=0",
            "--client",
            "first-svc:first secret",
            "--client",
            "second-svc:two",
            "--expires-in",
            "60",
            "--fail",
            "429",
            "--retry-after",
            "7",
            "--fail-times",
            "1",
        ],
        None,
    );
    let banner = process.read_until("export ROUTERA_API_URL=");
    assert_eq!(banner.lines[4], "  other clients:  second-svc:two");
    assert_eq!(
        banner.lines[5],
        "  fault:          token requests get a 429 with Retry-After: 7, the first one only"
    );
    assert_eq!(banner.export("ROUTERA_CLIENT_ID"), "first-svc");
    // Quoted for the shell.
    assert_eq!(banner.export("ROUTERA_CLIENT_SECRET"), "'first secret'");

    let client = client(None);
    let first = ClientCredentials::new("first-svc", "first secret");
    let error = exchange(&client, &banner, first.clone()).await.unwrap_err();
    assert_eq!(
        error.status(),
        Some(StatusCode::TOO_MANY_REQUESTS),
        "{error}"
    );
    assert_eq!(error.retry_after(), Some(Duration::from_secs(7)), "{error}");

    let token = exchange(&client, &banner, first).await.unwrap();
    assert_eq!(token.expires_in(), Some(Duration::from_secs(60)));
    let second = ClientCredentials::new("second-svc", "two");
    let token = exchange(&client, &banner, second).await.unwrap();
    assert_eq!(ping(&client, &banner, &token).await, StatusCode::OK);
    // The default client is not registered when others are.
    let default = ClientCredentials::new("routera-test-client", "routera-test-secret");
    let error = exchange(&client, &banner, default).await.unwrap_err();
    assert_eq!(error.kind(), TokenErrorKind::InvalidClient, "{error}");

    process.signal("TERM");
    assert_stopped(&process.wait());
}

#[tokio::test]
async fn https_writes_a_ca_that_a_client_trusting_only_it_can_use() {
    let dir = temp_dir("https");
    let process = Process::spawn(
        &["--port", "0", "--https", "--ca-file", "ca.pem"],
        Some(&dir),
    );
    let banner = process.read_until("export SSL_CERT_FILE=");
    let base = banner.base_url().to_owned();
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");
    assert_eq!(
        banner.lines[0],
        format!("Routera emulator on {base} (Ctrl-C stops it)")
    );
    assert_eq!(banner.export("ROUTERA_API_URL"), format!("{base}/v1/ping"));
    let comment = &banner.lines[banner.lines.len() - 2];
    assert!(
        comment.starts_with("# ") && comment.contains("trust only"),
        "{comment}"
    );
    // The CA file, written where asked, exported by its absolute path.
    let ca_file = dir.join("ca.pem");
    assert_eq!(Path::new(banner.export("SSL_CERT_FILE")), ca_file);
    let pem = std::fs::read_to_string(&ca_file).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");

    let trusting = client(Some(&pem));
    let token = exchange(&trusting, &banner, exported_credentials(&banner))
        .await
        .unwrap();
    assert_eq!(ping(&trusting, &banner, &token).await, StatusCode::OK);

    // A client that does not trust that CA is refused at the handshake.
    let error = exchange(&client(None), &banner, exported_credentials(&banner))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), TokenErrorKind::Transport, "{error}");

    process.signal("TERM");
    assert_stopped(&process.wait());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_command_line_exits_2_with_what_was_wrong_and_the_usage() {
    let cases: &[(&[&str], &str)] = &[
        (&["--bogus"], "unknown option `--bogus`"),
        (
            &["--port", "http"],
            "--port needs a port number from 0 to 65535, not `http`",
        ),
        (&["--client"], "--client needs a value"),
        (
            &["--fail", "503", "--slow", "10"],
            "cannot be used together",
        ),
        (&["--retry-after", "5"], "--retry-after goes with --fail"),
    ];
    for (args, expected) in cases {
        let exit = Process::spawn(args, None).wait();
        assert_eq!(exit.status.code(), Some(2), "{args:?}: {}", exit.stderr);
        assert!(exit.stdout.is_empty(), "{args:?}: {:?}", exit.stdout);
        let lines: Vec<&str> = exit.stderr.lines().collect();
        assert_eq!(lines.len(), 2, "{args:?}: {}", exit.stderr);
        assert!(lines[0].starts_with("routera-emulator: "), "{}", lines[0]);
        assert!(lines[0].contains(expected), "{args:?}: {}", lines[0]);
        assert!(
            lines[1].starts_with("usage: routera-emulator [--port PORT]"),
            "{}",
            lines[1]
        );
    }
}

#[test]
fn help_exits_0_with_the_curl_example_and_the_control_api() {
    for flag in ["--help", "-h"] {
        let exit = Process::spawn(&[flag], None).wait();
        assert_eq!(exit.status.code(), Some(0), "{flag}: {}", exit.stderr);
        assert_eq!(exit.stderr, "");
        let help = exit.stdout.join("\n");
        for expected in [
            "usage: routera-emulator [OPTIONS]",
            "  curl -s -X POST http://127.0.0.1:7357/oauth2/token -d grant_type=client_credentials \
             -d client_id=routera-test-client -d client_secret=routera-test-secret",
            "  curl -H \"Authorization: Bearer <access_token>\" http://127.0.0.1:7357/v1/ping",
            "curl -X POST http://127.0.0.1:7357/emulator/revoke",
            "curl -X POST http://127.0.0.1:7357/emulator/fault -d status=503 -d retry_after=5 -d times=2",
            "curl -X POST http://127.0.0.1:7357/emulator/fault -d delay_ms=2000",
            "curl -X DELETE http://127.0.0.1:7357/emulator/fault",
            "--port PORT",
            "--client ID:SECRET",
            "--expires-in SECONDS",
            "--https",
            "--ca-file PATH",
            "--fail STATUS",
            "--retry-after SECONDS",
            "--slow MS",
            "--fail-times N",
        ] {
            assert!(
                help.contains(expected),
                "{flag}: no `{expected}` in\n{help}"
            );
        }
    }
}

#[test]
fn a_port_in_use_exits_1_and_says_which_and_what_to_do() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port().to_string();
    let exit = Process::spawn(&["--port", &port], None).wait();
    assert_eq!(exit.status.code(), Some(1), "{}", exit.stderr);
    assert!(exit.stdout.is_empty(), "{:?}", exit.stdout);
    assert!(
        exit.stderr.starts_with(&format!(
            "routera-emulator: cannot listen on 127.0.0.1:{port}: "
        )),
        "{}",
        exit.stderr
    );
    assert!(exit.stderr.contains("--port 0"), "{}", exit.stderr);
    assert_eq!(exit.stderr.lines().count(), 1, "{}", exit.stderr);
}

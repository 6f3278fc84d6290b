//! `kestra-edge doctor` as users run it: the real binary, its output and its exit status,
//! against the stand-in (a Kestra on 127.0.0.1:0 whose `kestra.url` the test sets).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use kestra_edge_standin::{Standin, StandinConfig};
use std::{process::Output, time::Duration};
use tokio::process::Command;

const LIMIT: Duration = Duration::from_secs(20);

async fn doctor(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kestra-edge"));
    command
        .arg("doctor")
        .args(args)
        // The flags' variables must not leak in from the environment running the tests.
        .env_remove("KESTRA_EDGE_UPSTREAM")
        .env_remove("KESTRA_EDGE_KESTRA_CREDENTIALS_FILE")
        .kill_on_drop(true);
    tokio::time::timeout(LIMIT, command.output())
        .await
        .expect("doctor ends in time")
        .unwrap()
}

#[tokio::test]
async fn exit_status_follows_kestra_url() {
    let standin = Standin::start(StandinConfig::default()).await.unwrap();
    let public = format!("{}/kestra/", standin.url());
    let upstream = standin.url();
    let common = [
        "--public-url",
        public.as_str(),
        "--upstream",
        upstream.as_str(),
        "--timeout",
        "2s",
    ];

    standin.control().set_kestra_url(Some(public.clone()));
    let output = doctor(&common).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("All checks OK."), "{stdout}");
    assert!(
        stdout.contains(&format!("kestra:\n  url: {public}\n")),
        "{stdout}"
    );
    assert!(stdout.contains("micronaut:\n  server:\n    context-path: /kestra\n"));
    assert!(stdout.contains(&format!(
        "kestra-edge --upstream {upstream} --context-path /kestra --prefix-mode keep"
    )));

    // The classic mistake: the UI's URL as kestra.url.
    standin
        .control()
        .set_kestra_url(Some(format!("{public}ui/")));
    let output = doctor(&common).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("PROBLEM  kestra.url:"), "{stdout}");
    assert!(
        stdout.contains(&format!("fix: set kestra.url: {public}")),
        "{stdout}"
    );
}

#[tokio::test]
async fn unusable_arguments_exit_2() {
    let output = doctor(&["--public-url", "kestra.example.com/kestra/"]).await;
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--public-url"));
    // clap's own usage errors: --public-url is required.
    let output = doctor(&[]).await;
    assert_eq!(output.status.code(), Some(2));
}

//! Secrets never show: not in `--help`, not in errors or logs, not on `/metrics`; and
//! a password can come from a file, from a `*_FILE` variable or from `PGPASSWORD`, as
//! libpq users expect.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

/// Points a bridge's settings at the password by one of the ways.
type Configure<'a> = dyn Fn(&mut BridgeArgs) + 'a;

const SECRETS: [&str; 3] = ["hunter2", "hunter3", "hunter4"];

fn assert_no_secret(what: &str, text: &str) {
    for s in SECRETS.iter().chain([&PASSWORD_ROLE_SECRET]) {
        assert!(!text.contains(s), "{what} shows the secret {s}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_and_errors_never_show_a_password() {
    let pg = pg().await;
    ensure_password_role(&pg).await;
    let help = Command::new(bridge_bin())
        .arg("--help")
        .env("TIDEMARK_POSTGRES", "postgres://u:hunter2@h/db")
        .env("TIDEMARK_KAFKA_PROPERTIES", "sasl.password=hunter3")
        .output()
        .expect("run --help");
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("TIDEMARK_POSTGRES"), "{text}");
    assert_no_secret("--help", &text);

    // A wrong password given as a URL parameter: authentication fails, and neither the
    // bridge's exit message nor its log repeats the password.
    let name = unique("secrets");
    let table = format!("{name}_t");
    create_table(&pg, &table).await;
    let mut args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    let mut url = url::Url::parse(&args.postgres).unwrap();
    url.set_username(PASSWORD_ROLE).unwrap();
    url.query_pairs_mut().append_pair("password", "hunter4");
    args.postgres = url.to_string();
    args.extra = vec!["--kafka-property".into(), "sasl.password=hunter3".into()];
    let mut bridge = Bridge::start(&args);
    let status = bridge.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "a failed login is an error");
    let log = bridge.log_text();
    assert!(log.contains("password authentication failed"), "{log}");
    assert_no_secret("the log", &log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_comes_from_a_file_a_file_variable_or_pgpassword() {
    let pg = pg().await;
    ensure_password_role(&pg).await;
    let dir = std::env::temp_dir().join(unique("tidemark-secrets"));
    std::fs::create_dir_all(&dir).unwrap();
    let password_file = dir.join("password");
    std::fs::write(&password_file, format!("{PASSWORD_ROLE_SECRET}\n")).unwrap();
    let url_file = dir.join("url");
    std::fs::write(&url_file, as_password_role(&pg_url())).unwrap();
    let mut role_url = url::Url::parse(&pg_url()).unwrap();
    role_url.set_username(PASSWORD_ROLE).unwrap();

    let ways: [(&str, Box<Configure<'_>>); 3] = [
        (
            "--postgres-password-file",
            Box::new(|a: &mut BridgeArgs| {
                a.postgres = role_url.to_string();
                a.extra.extend([
                    "--postgres-password-file".into(),
                    password_file.display().to_string(),
                ]);
            }),
        ),
        (
            "TIDEMARK_POSTGRES_FILE",
            Box::new(|a: &mut BridgeArgs| {
                a.postgres = String::new();
                a.env.push((
                    "TIDEMARK_POSTGRES_FILE".into(),
                    url_file.display().to_string(),
                ));
            }),
        ),
        (
            "PGPASSWORD",
            Box::new(|a: &mut BridgeArgs| {
                a.postgres = role_url.to_string();
                a.env
                    .push(("PGPASSWORD".into(), PASSWORD_ROLE_SECRET.to_string()));
            }),
        ),
    ];
    for (i, (way, set)) in ways.iter().enumerate() {
        let name = unique("pwfile");
        let table = format!("{name}_t");
        create_table(&pg, &table).await;
        let mut args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
        set(&mut args);
        let http = format!("127.0.0.1:{}", 19180 + i);
        args.extra.extend(["--http".into(), http.clone()]);
        let (mut bridge, args) = start_bridge_with(args).await;
        pg.batch_execute(&format!("INSERT INTO {table} VALUES (1000, 'new')"))
            .await
            .unwrap();
        wait_for_records(
            &args.kafka,
            &args.topic(&format!("public.{table}")),
            1,
            Duration::from_secs(60),
        )
        .await;
        let (_, metrics) = http_get(&http, "/metrics").await.expect("/metrics");
        assert_no_secret(&format!("/metrics ({way})"), &metrics);
        assert_no_secret(&format!("the log ({way})"), &bridge.log_text());
        bridge.sigterm(Duration::from_secs(30));
    }
}

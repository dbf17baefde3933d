//! Connecting to PostgreSQL with libpq-style TLS settings and the codec's session
//! options: the one place both the cache and the bridge open an ordinary SQL
//! connection.
//!
//! `tokio-postgres` 0.7 knows only `sslmode=disable|prefer|require` and no
//! certificate parameters, so [`ConnectOptions::parse`] takes the TLS parameters
//! (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`) out of a `postgres://` URL, hands
//! the rest to `tokio-postgres`, and [`ConnectOptions::connect`] negotiates TLS with
//! rustls the way libpq would
//! (<https://www.postgresql.org/docs/current/libpq-ssl.html#LIBPQ-SSL-PROTECTION>):
//!
//! | `sslmode` | TLS | certificate check |
//! |---|---|---|
//! | `disable` | never | - |
//! | `allow`, `prefer` (default) | when the server offers it | none |
//! | `require` | always | none; with `sslrootcert`, as `verify-ca` (as libpq does) |
//! | `verify-ca` | always | chain against `sslrootcert`, else the webpki (Mozilla) roots |
//! | `verify-full` | always | chain, and the certificate names the host |
//!
//! libpq's `allow` tries plain text first; `tokio-postgres` cannot, so `allow` acts
//! as `prefer`. The replication connection (pgwire-replication) reads the same
//! parameters with the same meaning and the same roots. Certificate files are read at
//! every connect, so rotated files take effect at the next connection.

use std::path::PathBuf;
use std::str::FromStr;

use tokio_postgres::config::{Host, SslMode as DriverSslMode};
use tokio_postgres::{Client, NoTls};

use crate::wire::SESSION_OPTIONS;

pub mod catalog;
pub mod snapshot;

/// SQL that sets the session's client encoding to `SQL_ASCII` in a `SQL_ASCII`
/// database and does nothing elsewhere. There PostgreSQL checks the text it sends a
/// UTF-8 client and fails a whole read on the first byte that is not UTF-8; with no
/// conversion it sends the bytes as stored, as pgoutput does, which the codec reads
/// losslessly ([`crate::wire::codec::text_of`]). For the cache's load and the bridge's
/// snapshot alike.
pub const MATCH_SQL_ASCII_SQL: &str =
    "SELECT pg_catalog.set_config('client_encoding', 'SQL_ASCII', false) \
     WHERE pg_catalog.current_setting('server_encoding') = 'SQL_ASCII'";
mod tls;

/// The URL query parameters this module handles itself instead of `tokio-postgres`.
pub const TLS_PARAMETERS: &[&str] = &["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Plain text only.
    Disable,
    /// libpq tries plain text first; here the same as [`SslMode::Prefer`].
    Allow,
    /// TLS when the server offers it, without a certificate check (the default).
    #[default]
    Prefer,
    /// TLS always; no certificate check unless `sslrootcert` is given.
    Require,
    /// TLS always; the certificate chain is checked, the host name is not.
    VerifyCa,
    /// TLS always; the chain is checked and the certificate must name the host.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = SettingsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(SettingsError::new(
                    "sslmode",
                    format!("unknown value {other:?}; use disable, allow, prefer, require, verify-ca or verify-full"),
                ))
            }
        })
    }
}

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Nothing: encryption without authentication.
    None,
    /// The chain up to a trusted root, not the host name.
    Chain,
    /// The chain and the host name.
    ChainAndHost,
}

/// The TLS parameters of a PostgreSQL URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// `sslmode`.
    pub mode: SslMode,
    /// `sslrootcert`: PEM file of the certificate authorities to trust.
    pub root_cert: Option<PathBuf>,
    /// `sslcert`: PEM file of the client certificate (chain).
    pub cert: Option<PathBuf>,
    /// `sslkey`: PEM file of the client certificate's private key.
    pub key: Option<PathBuf>,
}

impl TlsSettings {
    /// The certificate check libpq makes for these settings.
    pub fn verification(&self) -> Verification {
        match self.mode {
            SslMode::Disable | SslMode::Allow | SslMode::Prefer => Verification::None,
            SslMode::Require if self.root_cert.is_none() => Verification::None,
            SslMode::Require | SslMode::VerifyCa => Verification::Chain,
            SslMode::VerifyFull => Verification::ChainAndHost,
        }
    }

    /// The `tokio-postgres` mode that negotiates TLS as these settings ask.
    pub fn driver_mode(&self) -> DriverSslMode {
        match self.mode {
            SslMode::Disable => DriverSslMode::Disable,
            SslMode::Allow | SslMode::Prefer => DriverSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => DriverSslMode::Require,
        }
    }
}

/// Whether a PostgreSQL error may pass if the same work is tried again later: a lost
/// or refused connection (no server error at all), and the server error classes of
/// connection exceptions (08), operator intervention such as a restart or a cancel
/// (57), insufficient resources (53) and transaction rollbacks such as serialization
/// failures and deadlocks (40). Anything else (permissions, a missing table, bad SQL)
/// needs a person.
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        None => true,
        Some(db) => ["08", "57", "53", "40"]
            .iter()
            .any(|class| db.code().code().starts_with(class)),
    }
}

/// A bad connection setting; names the URL parameter. Never contains the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{parameter}: {problem}")]
pub struct SettingsError {
    /// The URL parameter (or `url` for the URL as a whole).
    pub parameter: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl SettingsError {
    fn new(parameter: &'static str, problem: impl Into<String>) -> Self {
        SettingsError {
            parameter,
            problem: problem.into(),
        }
    }
}

/// Why [`ConnectOptions::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A setting is wrong (an unreadable certificate file, a key without a certificate);
    /// retrying does not help.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The server could not be reached, refused the session, or failed the TLS
    /// handshake (an untrusted certificate, a host name the certificate does not name).
    #[error("{}", error_detail(.0))]
    Postgres(#[source] tokio_postgres::Error),
}

/// A driver error as a person needs it: the server's message and SQLSTATE for
/// database errors, otherwise the driver's text followed by its causes (its own
/// `Display` says only "db error" or "error performing TLS handshake").
pub fn error_detail(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}

/// A PostgreSQL URL, parsed: the `tokio-postgres` settings plus the TLS settings it
/// cannot hold. `Debug` hides the password.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    config: tokio_postgres::Config,
    tls: TlsSettings,
}

impl ConnectOptions {
    /// Parses a `postgres://` (or `postgresql://`) URL. Its TLS parameters are taken
    /// out and the rest goes to `tokio-postgres`, which also accepts libpq's
    /// `key=value` form; in that form only its own `sslmode` values work.
    pub fn parse(url: &str) -> Result<Self, SettingsError> {
        let (rest, params) = split_tls_parameters(url)?;
        let mut config = tokio_postgres::Config::from_str(&rest)
            .map_err(|e| SettingsError::new("url", format!("not a PostgreSQL URL ({e})")))?;
        let mut tls = TlsSettings {
            mode: match config.get_ssl_mode() {
                DriverSslMode::Disable => SslMode::Disable,
                DriverSslMode::Prefer => SslMode::Prefer,
                _ => SslMode::Require,
            },
            ..TlsSettings::default()
        };
        for (key, value) in params {
            match key {
                "sslmode" => tls.mode = value.parse()?,
                "sslrootcert" => tls.root_cert = Some(file_parameter(key, value)?),
                "sslcert" => tls.cert = Some(file_parameter(key, value)?),
                _ => tls.key = Some(file_parameter(key, value)?),
            }
        }
        config.ssl_mode(tls.driver_mode());
        let mut options = ConnectOptions { config, tls };
        if options.config.get_password().is_none() {
            if let Some(password) = password_from_environment(&options) {
                options.config.password(password);
            }
        }
        Ok(options)
    }

    /// Uses `password` (from a file or a secret store) instead of any the URL or the
    /// environment gave.
    pub fn with_password(mut self, password: &str) -> Self {
        self.config.password(password);
        self
    }

    /// The user name the connection logs in as: the URL's, else `postgres`.
    pub fn user(&self) -> &str {
        self.config
            .get_user()
            .filter(|u| !u.is_empty())
            .unwrap_or("postgres")
    }

    /// The first host, as libpq matches it against `.pgpass` (`localhost` for a
    /// socket directory).
    fn host_for_pgpass(&self) -> String {
        match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.trim_matches(['[', ']']).to_owned(),
            _ => "localhost".to_owned(),
        }
    }

    /// Adds the codec's session options ([`SESSION_OPTIONS`], after any the URL sets,
    /// so they win) and `application_name`, unless the URL names one.
    pub fn with_session(mut self, application_name: &str) -> Self {
        let options = match self.config.get_options() {
            Some(o) if !o.trim().is_empty() => format!("{o} {SESSION_OPTIONS}"),
            _ => SESSION_OPTIONS.to_owned(),
        };
        self.config.options(options);
        if self.config.get_application_name().is_none() {
            self.config.application_name(application_name);
        }
        self
    }

    /// The `tokio-postgres` settings (TLS mode included, certificates not).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The TLS settings.
    pub fn tls(&self) -> &TlsSettings {
        &self.tls
    }

    /// `host:port/db`, for messages (never the password).
    pub fn target(&self) -> String {
        let c = &self.config;
        let host = c
            .get_hosts()
            .first()
            .map(|h| match h {
                Host::Tcp(h) => h.clone(),
                #[cfg(unix)]
                Host::Unix(p) => p.display().to_string(),
            })
            .unwrap_or_else(|| "localhost".into());
        let port = c.get_ports().first().copied().unwrap_or(5432);
        format!("{host}:{port}/{}", c.get_dbname().unwrap_or("?"))
    }

    /// Connects, with TLS as the settings ask, and drives the connection in a task
    /// that logs (at debug) how it ended.
    pub async fn connect(&self) -> Result<Client, ConnectError> {
        if self.tls.mode == SslMode::Disable {
            let (client, connection) = self
                .config
                .connect(NoTls)
                .await
                .map_err(ConnectError::Postgres)?;
            tokio::spawn(drive(connection));
            return Ok(client);
        }
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(self.tls.client_config()?);
        let (client, connection) = self
            .config
            .connect(tls)
            .await
            .map_err(ConnectError::Postgres)?;
        tokio::spawn(drive(connection));
        Ok(client)
    }
}

/// The password libpq would use when the URL gives none: `PGPASSWORD`, else the
/// matching line of the password file (`PGPASSFILE`, else `~/.pgpass`), which libpq
/// ignores, as here, when group or others can read it.
fn password_from_environment(options: &ConnectOptions) -> Option<String> {
    if let Some(p) = std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty()) {
        return Some(p);
    }
    let path = match std::env::var_os("PGPASSFILE") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".pgpass"),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).ok()?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                file = %path.display(),
                "the password file is readable by group or others and is ignored, as libpq does; chmod 0600 it"
            );
            return None;
        }
    }
    let text = std::fs::read_to_string(&path).ok()?;
    let port = options
        .config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let user = options.user();
    let db = options.config.get_dbname().unwrap_or(user);
    pgpass_lookup(&text, &options.host_for_pgpass(), &port, db, user)
}

/// The password of the first `.pgpass` line matching `host:port:database:user`, each
/// field `*` or equal; `\:` and `\\` escape a colon and a backslash.
fn pgpass_lookup(text: &str, host: &str, port: &str, db: &str, user: &str) -> Option<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let mut fields = Vec::with_capacity(5);
            let mut field = String::new();
            let mut chars = line.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => field.extend(chars.next()),
                    ':' if fields.len() < 4 => fields.push(std::mem::take(&mut field)),
                    // libpq: the password ends at the next unescaped colon.
                    ':' => break,
                    c => field.push(c),
                }
            }
            fields.push(field);
            let [h, p, d, u, password] = <[String; 5]>::try_from(fields).ok()?;
            let matches = |pattern: &str, value: &str| pattern == "*" || pattern == value;
            (matches(&h, host) && matches(&p, port) && matches(&d, db) && matches(&u, user))
                .then_some(password)
        })
}

async fn drive<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(connection: F) {
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, "postgresql connection closed");
    }
}

fn file_parameter(key: &'static str, value: String) -> Result<PathBuf, SettingsError> {
    if value.is_empty() {
        return Err(SettingsError::new(
            key,
            "is empty; give the path of a PEM file",
        ));
    }
    Ok(PathBuf::from(value))
}

/// TLS parameters taken out of a URL: name and percent-decoded value.
type TlsParameters = Vec<(&'static str, String)>;

/// Takes [`TLS_PARAMETERS`] out of a URL's query string (percent-decoded) and returns
/// the URL without them. A string that is not a URL is returned unchanged.
fn split_tls_parameters(url: &str) -> Result<(String, TlsParameters), SettingsError> {
    let is_url = ["postgres://", "postgresql://"]
        .iter()
        .any(|scheme| url.starts_with(scheme));
    let Some((base, query)) = url.split_once('?').filter(|_| is_url) else {
        return Ok((url.to_owned(), Vec::new()));
    };
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(raw_key)?;
        match TLS_PARAMETERS.iter().find(|p| **p == key) {
            Some(&name) => {
                if taken.iter().any(|(k, _)| *k == name) {
                    return Err(SettingsError::new(name, "is given more than once"));
                }
                taken.push((name, decode(raw_value)?));
            }
            None => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, taken))
}

fn decode(s: &str) -> Result<String, SettingsError> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|v| v.into_owned())
        .map_err(|_| SettingsError::new("url", "a query parameter is not valid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> ConnectOptions {
        ConnectOptions::parse(url).unwrap()
    }

    fn parameter(url: &str) -> &'static str {
        ConnectOptions::parse(url).unwrap_err().parameter
    }

    #[test]
    fn takes_the_tls_parameters_out_of_the_url() {
        let o = parse(
            "postgres://app:s%40cret@db:6432/shop?connect_timeout=5&sslmode=verify-full\
             &sslrootcert=%2Fetc%2Fca%20x.pem&application_name=svc&sslcert=/c.pem&sslkey=/k.pem",
        );
        assert_eq!(
            o.tls(),
            &TlsSettings {
                mode: SslMode::VerifyFull,
                root_cert: Some("/etc/ca x.pem".into()),
                cert: Some("/c.pem".into()),
                key: Some("/k.pem".into()),
            }
        );
        assert_eq!(o.config().get_ssl_mode(), DriverSslMode::Require);
        assert_eq!(o.config().get_password(), Some(&b"s@cret"[..]));
        assert_eq!(o.config().get_application_name(), Some("svc"));
        assert_eq!(
            o.config().get_connect_timeout(),
            Some(&std::time::Duration::from_secs(5))
        );
        assert_eq!(o.target(), "db:6432/shop");
        let (rest, _) = split_tls_parameters("postgresql://h/d?sslmode=require").unwrap();
        assert_eq!(rest, "postgresql://h/d");
    }

    #[test]
    fn pgpass_lines_match_as_libpq_matches_them() {
        let file = "# comment\ndb:5432:shop:app:first\n*:*:*:app:any\\:colon\n*:*:*:*:last\n";
        assert_eq!(
            pgpass_lookup(file, "db", "5432", "shop", "app").as_deref(),
            Some("first")
        );
        assert_eq!(
            pgpass_lookup(file, "other", "6432", "x", "app").as_deref(),
            Some("any:colon")
        );
        assert_eq!(
            pgpass_lookup(file, "db", "5432", "shop", "bob").as_deref(),
            Some("last")
        );
        assert_eq!(pgpass_lookup("h:1:d:u:p", "h", "2", "d", "u"), None);
    }

    #[test]
    fn maps_every_mode_as_libpq_does() {
        let cases = [
            ("disable", DriverSslMode::Disable, Verification::None),
            ("allow", DriverSslMode::Prefer, Verification::None),
            ("prefer", DriverSslMode::Prefer, Verification::None),
            ("require", DriverSslMode::Require, Verification::None),
            ("verify-ca", DriverSslMode::Require, Verification::Chain),
            (
                "verify-full",
                DriverSslMode::Require,
                Verification::ChainAndHost,
            ),
        ];
        for (mode, driver, verification) in cases {
            let o = parse(&format!("postgres://u@h/d?sslmode={mode}"));
            assert_eq!(o.config().get_ssl_mode(), driver, "{mode}");
            assert_eq!(o.tls().verification(), verification, "{mode}");
        }
        // libpq: require with a root certificate checks the chain.
        let o = parse("postgres://u@h/d?sslmode=require&sslrootcert=/ca.pem");
        assert_eq!(o.tls().verification(), Verification::Chain);
        // No sslmode: prefer, as libpq.
        assert_eq!(parse("postgres://u@h/d").tls().mode, SslMode::Prefer);
        // The key=value form keeps tokio-postgres' own modes.
        let o = parse("host=h user=u sslmode=require");
        assert_eq!(o.tls().mode, SslMode::Require);
        assert_eq!(parse("host=h sslmode=disable").tls().mode, SslMode::Disable);
    }

    #[test]
    fn errors_name_the_parameter_and_hide_the_password() {
        let e = ConnectOptions::parse("postgres://u:hunter2@h/d?sslmode=verify-everything")
            .unwrap_err();
        assert_eq!(e.parameter, "sslmode");
        assert!(e.to_string().contains("verify-everything"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert_eq!(parameter("postgres://u@h/d?sslrootcert="), "sslrootcert");
        assert_eq!(
            parameter("postgres://u@h/d?sslmode=require&sslmode=disable"),
            "sslmode"
        );
        let e = ConnectOptions::parse("postgres://u:hunter2@h:notaport/d").unwrap_err();
        assert_eq!(e.parameter, "url");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let o = parse("postgres://u:hunter2@h/d?sslmode=require");
        assert!(!format!("{o:?}").contains("hunter2"));
    }

    #[test]
    fn certificate_files_are_checked_when_connecting() {
        let missing = parse("postgres://u@h/d?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem");
        let e = missing.tls().client_config().unwrap_err();
        assert_eq!(e.parameter, "sslrootcert");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");

        let dir = std::env::temp_dir().join(format!("tidemark-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let o = parse(&format!(
            "postgres://u@h/d?sslmode=verify-full&sslrootcert={}",
            empty.display()
        ));
        let e = o.tls().client_config().unwrap_err();
        assert_eq!(e.parameter, "sslrootcert");
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);

        let e = parse("postgres://u@h/d?sslmode=require&sslcert=/c.pem")
            .tls()
            .client_config()
            .unwrap_err();
        assert_eq!(e.parameter, "sslkey");
        // Without files, every mode builds (webpki roots for verify-*).
        for mode in ["prefer", "require", "verify-ca", "verify-full"] {
            let o = parse(&format!("postgres://u@h/d?sslmode={mode}"));
            assert!(o.tls().client_config().is_ok(), "{mode}");
        }
    }

    #[test]
    fn session_options_come_last_and_keep_the_url_application_name() {
        let o = parse("postgres://u@h/d?options=-c%20statement_timeout%3D0&sslmode=disable")
            .with_session("tidemark-test");
        assert_eq!(
            o.config().get_options(),
            Some(format!("-c statement_timeout=0 {SESSION_OPTIONS}").as_str())
        );
        assert_eq!(o.config().get_application_name(), Some("tidemark-test"));
        let o = parse("postgres://u@h/d?application_name=mine").with_session("tidemark-test");
        assert_eq!(o.config().get_application_name(), Some("mine"));
        assert_eq!(o.config().get_options(), Some(SESSION_OPTIONS));
    }
}

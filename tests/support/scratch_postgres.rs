//! A throwaway PostgreSQL server of its own, with its own settings and certificates.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Runs a command as the `postgres` OS user when we are root (initdb refuses root).
fn as_postgres_user(program: &str, args: &[&str]) -> Command {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    if is_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", program]).args(args);
        c
    } else {
        let mut c = Command::new(program);
        c.args(args);
        c
    }
}

/// A throwaway PostgreSQL server of its own, for settings the shared one must not
/// change (such as `wal_level=replica`). Stopped and removed when dropped.
pub struct ScratchPostgres {
    dir: PathBuf,
    bin: PathBuf,
    pub url: String,
}

impl ScratchPostgres {
    /// Creates and starts a server on `port` with the given `wal_level`. Ports are
    /// below Linux's ephemeral range (32768-60999): a port in it can be taken at any
    /// moment by the local end of one of the suite's own connections, and the server
    /// then fails to start with "Address already in use".
    pub fn start(port: u16, wal_level: &str) -> ScratchPostgres {
        Self::launch(port, &format!("-c wal_level={wal_level}"), |_, _| {})
    }

    /// Creates and starts a server on `port` with the server options `opts`
    /// (`-c name=value ...`).
    pub fn start_with(port: u16, opts: &str) -> ScratchPostgres {
        Self::launch(port, opts, |_, _| {})
    }

    /// Creates and starts a server on `port` with `ssl=on` (a certificate for
    /// `localhost` and 127.0.0.1, signed by a throwaway CA, see [`Self::ca_pem`]),
    /// `wal_level=logical`, and TCP connections, replication included, allowed only
    /// over TLS (`hostssl`, trust).
    pub fn start_tls(port: u16) -> ScratchPostgres {
        let opts = "-c wal_level=logical -c max_replication_slots=4 -c max_wal_senders=4 \
                    -c ssl=on -c ssl_cert_file=../server.crt -c ssl_key_file=../server.key";
        Self::launch(port, opts, |dir, data| {
            make_certificates(dir);
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\n\
                 local replication all trust\n\
                 hostssl all all 127.0.0.1/32 trust\n\
                 hostssl replication all 127.0.0.1/32 trust\n",
            )
            .expect("write pg_hba.conf");
        })
    }

    /// The CA that signed a [`Self::start_tls`] server's certificate.
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A CA that did not sign the server's certificate.
    pub fn other_ca_pem(&self) -> PathBuf {
        self.dir.join("other-ca.pem")
    }

    /// initdb, then `prepare(dir, data)`, then `pg_ctl start` with `opts`.
    fn launch(
        port: u16,
        opts: &str,
        prepare: impl FnOnce(&std::path::Path, &std::path::Path),
    ) -> ScratchPostgres {
        let bin = PathBuf::from(
            String::from_utf8(
                Command::new("pg_config")
                    .arg("--bindir")
                    .output()
                    .expect("pg_config")
                    .stdout,
            )
            .expect("utf8")
            .trim(),
        );
        let bin = if bin.join("initdb").exists() {
            bin
        } else {
            PathBuf::from("/usr/lib/postgresql/15/bin")
        };
        let dir = std::env::temp_dir().join(format!(
            "tidemark-scratch-pg-{port}-{}",
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let _ = Command::new("chown")
            .args(["postgres:", dir.to_str().unwrap()])
            .status();
        let data = dir.join("data");
        let initdb = bin.join("initdb");
        let ok = as_postgres_user(
            initdb.to_str().unwrap(),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
            ],
        )
        .stdout(Stdio::null())
        .status()
        .expect("initdb");
        assert!(ok.success(), "initdb failed");
        prepare(&dir, &data);
        let opts = format!(
            "-p {port} {opts} -c listen_addresses=127.0.0.1 -k {}",
            dir.display()
        );
        let pg_ctl = bin.join("pg_ctl");
        let ok = as_postgres_user(
            pg_ctl.to_str().unwrap(),
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                dir.join("log").to_str().unwrap(),
                "-w",
                "start",
            ],
        )
        .stdout(Stdio::null())
        .status()
        .expect("pg_ctl start");
        assert!(
            ok.success(),
            "pg_ctl start failed; server log:\n{}",
            std::fs::read_to_string(dir.join("log")).unwrap_or_default()
        );
        ScratchPostgres {
            dir,
            bin,
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        }
    }
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run openssl ({e}); install it: apt-get install openssl")
        });
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes into `dir`: `ca.pem` (a self-signed CA), `server.crt`/`server.key` (signed
/// by it, for `localhost` and 127.0.0.1; the key readable by the postgres user only)
/// and `other-ca.pem` (an unrelated CA).
fn make_certificates(dir: &std::path::Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for (name, cn) in [
        ("ca", "tidemark test CA"),
        ("other-ca", "tidemark other CA"),
    ] {
        let (key, pem, subj) = (
            format!("{name}.key"),
            format!("{name}.pem"),
            format!("/CN={cn}"),
        );
        let mut args = vec![
            "req", "-x509", "-days", "2", "-subj", &subj, "-keyout", &key, "-out", &pem,
        ];
        args.extend(ec);
        args.extend([
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(dir, &args);
    }
    let mut args = vec![
        "req",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ];
    args.extend(ec);
    openssl(dir, &args);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write server.ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
    );
    let key = dir.join("server.key");
    let _ = Command::new("chown")
        .args(["postgres:", key.to_str().unwrap()])
        .status();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
        .expect("chmod server.key");
}

impl Drop for ScratchPostgres {
    fn drop(&mut self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.dir.join("data");
        let _ = as_postgres_user(
            pg_ctl.to_str().unwrap(),
            &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"],
        )
        .stdout(Stdio::null())
        .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

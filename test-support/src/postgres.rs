//! A throwaway PostgreSQL cluster for the tests.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Command, Stdio},
};

use crate::server::unique_prefix;

/// A throwaway PostgreSQL cluster (initdb + pg_ctl in a temporary directory, on a unix socket),
/// stopped and removed on drop. `DATABASE_URL` points the tests at a server you run instead.
pub struct TestPostgres {
    url: String,
    dir: Option<PathBuf>,
    bin: PathBuf,
}

impl TestPostgres {
    /// `DATABASE_URL`, else a new cluster from the newest `/usr/lib/postgresql/*/bin` (or
    /// `$PG_BIN`); panics with how to get PostgreSQL when neither works.
    pub fn start() -> Self {
        if let Some(url) = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
            return Self {
                url,
                dir: None,
                bin: PathBuf::new(),
            };
        }
        let bin = find_pg_bin().unwrap_or_else(|| {
            panic!(
                "no PostgreSQL for the tests: install it (Debian: `apt-get install -y postgresql`, \
                 or run `./scripts/test.sh`, which does), set PG_BIN to its bin directory, or set \
                 DATABASE_URL to a running server"
            )
        });
        Self::spawn(bin).unwrap_or_else(|e| panic!("the test PostgreSQL would not start: {e}"))
    }

    fn spawn(bin: PathBuf) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(unique_prefix("pg").replace(':', "-"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut pg = Self {
            url: String::new(),
            dir: Some(dir.clone()),
            bin,
        };
        // initdb refuses to run as root: hand the directory to the `postgres` user.
        if is_root() {
            run(Command::new("chown").arg("-R").arg("postgres").arg(&dir))?;
        }
        let data = dir.join("data");
        run(pg
            .as_owner("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&data))?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let options = format!(
            "-k {} -p {port} -c listen_addresses='' -c fsync=off -c synchronous_commit=off",
            dir.display()
        );
        run(pg
            .as_owner("pg_ctl")
            .args(["-w", "-t", "30", "-o", &options, "-l"])
            .arg(dir.join("postgres.log"))
            .arg("-D")
            .arg(&data)
            .arg("start"))?;
        pg.url = format!(
            "postgres://postgres@localhost/postgres?host={}&port={port}",
            dir.display()
        );
        Ok(pg)
    }

    /// A command of PostgreSQL's, run as the directory's owner.
    fn as_owner(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    /// The connection URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = self
                .as_owner("pg_ctl")
                .args(["-m", "immediate", "-D"])
                .arg(dir.join("data"))
                .arg("stop")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn find_pg_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("PG_BIN").filter(|b| !b.is_empty()) {
        return Some(PathBuf::from(bin));
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop()
}

fn is_root() -> bool {
    // Without libc: the effective uid is in /proc.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|v| v.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{command:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

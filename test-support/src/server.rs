//! A single `redis-server`: found, spawned, or a container.

use std::{
    io::{Read, Write},
    net::TcpStream,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

pub(crate) const HOW_TO_GET_REDIS: &str =
    "no Redis for the tests: install redis-server (Debian: `apt-get install -y redis-server`, \
or run `./scripts/test.sh`, which does), set REDIS_SERVER_BIN to a redis-server binary, \
or set REDIS_URL to a running server";

/// A Redis the tests can use, kept alive as long as this value lives.
pub struct TestRedis {
    url: String,
    kind: Kind,
}

enum Kind {
    External,
    Spawned(RedisServer),
    #[cfg(feature = "testcontainers")]
    Container(
        #[allow(dead_code)]
        Box<
            testcontainers_modules::testcontainers::ContainerAsync<
                testcontainers_modules::redis::Redis,
            >,
        >,
    ),
}

impl TestRedis {
    /// `REDIS_URL`, else a spawned `redis-server`, else a container; panics when none is possible.
    pub async fn start() -> Self {
        if let Some(url) = std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty()) {
            return Self {
                url,
                kind: Kind::External,
            };
        }
        Self::start_own().await
    }

    /// A server for this test alone (for counting commands, or stopping it), never `REDIS_URL`'s.
    pub async fn start_own() -> Self {
        match RedisServer::spawn() {
            Ok(server) => {
                return Self {
                    url: server.url(),
                    kind: Kind::Spawned(server),
                }
            }
            Err(SpawnError::NoBinary) => {}
            Err(SpawnError::Failed(why)) => panic!("redis-server would not start: {why}"),
        }
        #[cfg(feature = "testcontainers")]
        {
            if let Some(redis) = Self::container().await {
                return redis;
            }
        }
        panic!("{HOW_TO_GET_REDIS}");
    }

    #[cfg(feature = "testcontainers")]
    async fn container() -> Option<Self> {
        use testcontainers_modules::{
            redis::{Redis, REDIS_PORT},
            testcontainers::runners::AsyncRunner,
        };
        let container = match Redis::default().start().await {
            Ok(container) => container,
            Err(error) => {
                eprintln!("testcontainers could not start Redis: {error}");
                return None;
            }
        };
        let host = container.get_host().await.ok()?;
        let port = container.get_host_port_ipv4(REDIS_PORT).await.ok()?;
        Some(Self {
            url: format!("redis://{host}:{port}"),
            kind: Kind::Container(Box::new(container)),
        })
    }

    /// The connection URL (`redis://...` or `redis+unix://...`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The spawned server, for tests that stop or restart it.
    pub fn server(&mut self) -> Option<&mut RedisServer> {
        match &mut self.kind {
            Kind::Spawned(server) => Some(server),
            _ => None,
        }
    }

    /// A new connection, for tests that inspect or tamper with what the store wrote.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .expect("valid Redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test Redis")
    }
}

/// Makes the server answer no client for `how_long` (`CLIENT PAUSE ... ALL`), as a host gone
/// silent would. The pause ends by itself: a `CLIENT UNPAUSE` would wait for it like any other
/// command.
pub async fn pause_all_clients(conn: &mut redis::aio::MultiplexedConnection, how_long: Duration) {
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(u64::try_from(how_long.as_millis()).unwrap_or(u64::MAX))
        .arg("ALL")
        .query_async(conn)
        .await
        .expect("CLIENT PAUSE");
}

/// How many connections the server has accepted since it started (`INFO stats`,
/// `total_connections_received`): a test takes it before and after to count the connections a
/// step opened.
pub async fn connections_accepted(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(conn)
        .await
        .expect("INFO stats");
    info.lines()
        .find_map(|line| line.strip_prefix("total_connections_received:"))
        .and_then(|count| count.trim().parse().ok())
        .expect("INFO stats names total_connections_received")
}

/// A key prefix no other test uses, for sharing one server.
pub fn unique_prefix(test: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "test:{test}:{}-{nanos}-{}:",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Why a server could not be spawned.
#[derive(Debug)]
pub enum SpawnError {
    /// No `redis-server` binary was found.
    NoBinary,
    /// It was found but did not come up.
    Failed(String),
}

/// A `redis-server` this process started, on a unix socket, killed and cleaned up on drop.
pub struct RedisServer {
    child: Option<Child>,
    dir: PathBuf,
    binary: PathBuf,
}

impl RedisServer {
    /// Starts a server and waits until it answers `PING`.
    pub fn spawn() -> Result<Self, SpawnError> {
        let binary = find_binary().ok_or(SpawnError::NoBinary)?;
        let dir = std::env::temp_dir().join(unique_prefix("redis").replace(':', "-"));
        std::fs::create_dir_all(&dir).map_err(|e| SpawnError::Failed(e.to_string()))?;
        let mut server = Self {
            child: None,
            dir,
            binary,
        };
        server.start().map_err(SpawnError::Failed)?;
        Ok(server)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    /// Starts the server (again, after [`stop`](Self::stop)) on the same socket.
    pub fn start(&mut self) -> Result<(), String> {
        if self.child.is_some() {
            return Ok(());
        }
        let child = Command::new(&self.binary)
            .args([
                "--port",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--unixsocketperm",
                "700",
            ])
            .arg("--unixsocket")
            .arg(self.socket())
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", self.binary.display()))?;
        self.child = Some(child);
        wait_for_pong(&self.socket(), Duration::from_secs(10)).map_err(|e| {
            let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
            format!("{e}; server log:\n{log}")
        })
    }

    /// Kills the server, keeping its socket path for [`start`](Self::start).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.socket());
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn find_binary() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("REDIS_SERVER_BIN").filter(|b| !b.is_empty()) {
        return Some(PathBuf::from(bin));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
}

fn wait_for_pong(socket: &Path, limit: Duration) -> Result<(), String> {
    wait_until(limit, "answer PING", || {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        Ok(ask(stream, "PING")? == "+PONG\r\n")
    })
}

/// Polls `check` every 20 ms until it says yes, or fails after `limit` with the last error.
pub(crate) fn wait_until(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> std::io::Result<bool>,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!(
        "redis-server did not {what} within {limit:?}: {last}"
    ))
}

/// Sends one inline command and returns the raw reply (up to 4 KiB).
fn ask(mut stream: impl Read + Write, command: &str) -> std::io::Result<String> {
    stream.write_all(format!("{command}\r\n").as_bytes())?;
    let mut reply = vec![0u8; 4096];
    let n = stream.read(&mut reply)?;
    Ok(String::from_utf8_lossy(&reply[..n]).into_owned())
}

pub(crate) fn ask_tcp(port: u16, command: &str) -> std::io::Result<String> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    ask(stream, command)
}

//! Running an example binary as a client would meet it: on a free port, killed on drop.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use tokio::net::TcpStream;

/// A running example, killed on drop.
pub struct ExampleProcess {
    child: Child,
    pub addr: String,
}

impl Drop for ExampleProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cargo test` builds the examples next to the test binaries' folder.
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    dir.join("examples").join(name)
}

/// Starts example `name` with `BIND` set to a free port and `env` on top of a clean store
/// environment (no `REDIS_URL`, `DATABASE_URL` or `IDEMPOTENCY_STORE` unless `env` sets them),
/// and waits until it accepts connections.
pub async fn start_example(name: &str, env: &[(&str, &str)]) -> ExampleProcess {
    // A free port can be taken by another test before the example binds it: the example then
    // exits, and we try another port.
    for _ in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut command = Command::new(example_binary(name));
        command
            .env("BIND", &addr)
            .env("RUST_LOG", "warn")
            .env_remove("REDIS_URL")
            .env_remove("DATABASE_URL")
            .env_remove("IDEMPOTENCY_STORE")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut example = ExampleProcess {
            child: command
                .spawn()
                .expect("example binary (built by cargo test)"),
            addr,
        };
        let deadline = tokio::time::Instant::now() + super::DEADLINE;
        loop {
            if example.child.try_wait().unwrap().is_some() {
                break;
            }
            if TcpStream::connect(&example.addr).await.is_ok() {
                return example;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} did not start listening"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    panic!("{name} exited at start-up five times")
}

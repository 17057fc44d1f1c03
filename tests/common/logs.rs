//! Captures this test binary's log lines, so a test can check what an outcome logged.

use std::{
    io,
    sync::{Arc, Mutex, OnceLock},
};

#[derive(Clone)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn sink() -> &'static Sink {
    static SINK: OnceLock<Sink> = OnceLock::new();
    SINK.get_or_init(|| {
        let sink = Sink(Arc::new(Mutex::new(Vec::new())));
        let writer = sink.clone();
        tracing_subscriber::fmt()
            .with_env_filter("tower_idempotency=debug")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        sink
    })
}

/// Starts capturing (once per binary); call before the code under test runs.
pub fn capture() {
    sink();
}

/// The captured lines that contain every one of `needles`.
pub fn lines_with(needles: &[&str]) -> Vec<String> {
    let bytes = sink().0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter(|line| needles.iter().all(|n| line.contains(n)))
        .map(str::to_owned)
        .collect()
}

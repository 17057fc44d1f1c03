//! A TCP proxy that delays traffic like a network link, so that the load comparison and the
//! latency benches can give the store's connection (Redis, PostgreSQL) a chosen delay on a
//! machine without `tc netem`.
//!
//! `delay_proxy LISTEN_ADDR UPSTREAM_ADDR DELAY_US [LISTEN_ADDR UPSTREAM_ADDR]...`, for example
//! `delay_proxy 127.0.0.1:7001 127.0.0.1:6379 125`, then point the client at `127.0.0.1:7001`.
//! More pairs give more routes with the same delay in the same process (Redis and PostgreSQL
//! for the tiered store, say), so that their spinning lines share its one thread (below).
//! `DELAY_US` is the one-way delay in microseconds, applied in each direction, so a round trip
//! gains 2 x `DELAY_US` (125 gives a 0.25 ms round trip). `LISTEN_ADDR` may use port 0; the line
//! printed on start for each route (`listening on ..., upstream ..., one-way delay ... us`)
//! names the real port.
//! The proxy runs until ctrl-c or SIGTERM. Bad arguments print the usage and exit with code 2.
//!
//! # A delay line, not a slow server
//!
//! Each accepted connection gets its own upstream connection and one task per direction. The
//! task reads chunks as they come, stamps each with its due time (arrival + delay) and queues
//! it at once; meanwhile it waits until the due time of the chunk at the head of the queue and
//! writes it. Chunks leave in order, none earlier than the delay after it arrived, and the delay
//! does not serialise traffic: a pipelined or multiplexed connection (redis-rs sends many
//! requests over one connection) with many requests in flight sees each one delayed by the
//! delay, not by the delay times its place in the queue. An EOF travels the line too: once the
//! chunks before it are out, it shuts down the write half of the other side (half-close). An
//! error on any of the four halves (a reset, say) closes both connections at once, dropping what
//! is still in the line. A delay of 0 goes through the same line (each chunk due at once, the
//! same linger), so that a run at 0 measures what every delayed run pays besides its delay (a
//! plain read-then-write relay, tried first, sleeps between chunks and added about 1 ms per
//! round trip at one connection, on this VM, where the delayed lines add microseconds).
//!
//! # Waiting
//!
//! Tokio's timer has a 1 ms granularity. Measured on this machine (a 2-vCPU VM): a tokio sleep
//! of 125 us takes 1.1 ms at p50 and 2.1 ms at p90; `std::thread::sleep(125 us)` takes 215 us at
//! p50 (the 50 us default timer slack plus the VM's wake-up), still 160 us with the slack at
//! 1 ns, with a millisecond tail on a busy machine. Only a spin is accurate: a loop on
//! `Instant::now()` with `tokio::task::yield_now` ends at 125.1 us at p50 and p90. So a line
//! sleeps on tokio's timer until `SPIN_WINDOW` (2 ms) before a chunk's due time (delays longer
//! than that only), then spins, yielding each turn, which keeps the runtime serving every other
//! socket. After its last write a line keeps spinning for `LINGER` (1 ms), so that the proxy's
//! thread is awake when the answer arrives: the proxy's own wake-up (tens of microseconds per
//! chunk on an idle VM) would otherwise add to the delay, where a real link adds nothing. With
//! Redis at 125 us each way and one client (`-c 1`), the p50 round trip is 0.39-0.41 ms with the
//! linger, 0.53-0.58 ms without, against 0.35 ms for the direct round trip plus 0.25 ms.
//!
//! The runtime is single-threaded (`current_thread`): every spinning line shares its one thread,
//! so the proxy never takes more than one core, whatever the number of connections, and leaves
//! the other core to the server and the load generator. A multi-threaded runtime measured no
//! better (the same latency at `-c 1`, less throughput and more CPU per request at `-c 64`) and
//! can spin on both cores; a busy-waiting thread per direction would be 128 spinning threads for
//! 64 connections; a sleeping thread is not accurate (above); a `std::thread::yield_now` in the
//! spin changed nothing. The price: while traffic flows, and for 1 ms after, the proxy keeps one
//! core busy, which on this 2-core machine is CPU the server, Redis and the load generator no
//! longer have. Idle, the proxy uses no CPU.
//!
//! # Measured cost
//!
//! `redis-benchmark -t get -n 100000 -P 1 --precision 3` with `-c 1` and `-c 64`, against a
//! `redis-server --save '' --appendonly no` on loopback, directly and through the proxy: the
//! medians of 3 rounds on this 2-vCPU VM (load average about 1). CPU is the proxy's time on a
//! CPU (`/proc/PID/schedstat`) per request.
//!
//! | path          | `-c 1` p50 | `-c 1` p99 | `-c 64` p50 | `-c 64` req/s | CPU/req, 1 / 64 |
//! |---------------|------------|------------|-------------|---------------|-----------------|
//! | direct        | 0.095 ms   | 0.279 ms   | 0.375 ms    | 86 800        | -               |
//! | relay, 0 us   | 0.119 ms   | 0.343 ms   | 0.655 ms    | 71 900        | 50 us / 8.7 us  |
//! | proxy, 125 us | 0.383 ms   | 0.775 ms   | 0.903 ms    | 53 900        | 406 us / 18 us  |
//! | proxy, 250 us | 0.647 ms   | 1.119 ms   | 1.023 ms    | 49 300        | 675 us / 19 us  |
//!
//! The 0 us row is the plain relay a delay of 0 once took (no line, no linger): it added 24 us
//! to a round trip (p50), its two wake-ups, which were also most of its CPU per request at
//! `-c 1` (37 % of a core). On a busier day (December 3rd) the same relay added about 1 ms per
//! round trip to the load comparison at one connection, because each of its wake-ups waited for
//! a halted vCPU; the line at 0 us, which lingers, made a direct `-c 1` `GET` (4,700/s, p95
//! 1.4 ms that day) twice as fast (8,800/s, p95 0.13 ms), by keeping a core awake. So a run at
//! 0 us through the line, not a direct run, is the zero of the delayed figures. With a delay, the `-c 1` round trip
//! is the delay-0 one plus 2 x `DELAY_US` plus 14 us (125 us) or 28 us (250 us), and the proxy
//! keeps a core busy (98 %: the spin is its CPU per request). No round trip is shorter than
//! 2 x `DELAY_US` (the minimum is 0.264 ms at 125 us, 0.528 ms at 250 us). At `-c 64` the p50
//! at 125 us is the delay-0 p50 plus 0.25 ms: the 64 requests in flight are each delayed once,
//! none waits behind another. The throughput falls because 64 requests in flight over a longer
//! round trip make fewer per second (Little's law), and because the spin takes a core from
//! Redis and the load generator.
//!
//! `pgbench -S -c 1 -T 5` against PostgreSQL 15, p50: 0.19-0.21 ms direct, 0.23-0.26 ms at 0,
//! 0.49-0.55 ms at 125 us, 0.81-0.89 ms at 250 us. One redis-rs multiplexed connection with 64
//! tasks issuing `GET`s, p50: 0.27 ms direct, 0.28 ms at 0, 0.70 ms at 125 us, 1.23 ms at
//! 250 us (205 000, 184 000, 89 000 and 51 000 requests/s).
use std::{
    collections::VecDeque,
    io,
    net::{SocketAddr, ToSocketAddrs},
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpListener, TcpStream,
    },
    task::JoinSet,
};

const USAGE: &str =
    "usage: delay_proxy LISTEN_ADDR UPSTREAM_ADDR DELAY_US [LISTEN_ADDR UPSTREAM_ADDR]...

  LISTEN_ADDR    address to accept connections on, e.g. 127.0.0.1:7001 (port 0: any free port)
  UPSTREAM_ADDR  address every connection is forwarded to, e.g. 127.0.0.1:6379
  DELAY_US       one-way delay in microseconds (0 to 10000000), applied in each direction:
                 a round trip gains 2 x DELAY_US (125 = a 0.25 ms round trip)
  more pairs     more routes, with the same delay, served by the same thread

example: delay_proxy 127.0.0.1:7001 127.0.0.1:6379 125 127.0.0.1:7002 127.0.0.1:5432";

/// The largest delay accepted, 10 s.
const MAX_DELAY_US: u64 = 10_000_000;

/// How long before a chunk's due time a line stops sleeping on tokio's timer (1 ms granularity,
/// about 1 ms late at p50 and 2 ms at p90 on a busy machine) and starts spinning. Delays up to
/// this long are spun whole; a longer one can be late when tokio's timer is later than this.
const SPIN_WINDOW: Duration = Duration::from_millis(2);

/// How long a line keeps spinning after its last write, once it is empty. While it spins, the
/// runtime's thread never goes to sleep, so the answer to what was just written (or the next
/// request) is read at once: without it, the proxy's own wake-up (tens of microseconds on a VM,
/// whose idle vCPUs halt) would add to the delay, once per chunk, where a real link adds
/// nothing. After 1 ms without traffic the proxy sleeps.
const LINGER: Duration = Duration::from_millis(1);

/// The most bytes one read takes.
const CHUNK: usize = 16 * 1024;

/// Chunks in flight in one direction before reading waits for writing (up to 16 MiB). Far more
/// than a delay of milliseconds holds, so the bound only matters when the receiving side stops
/// reading, where it keeps the proxy's memory bounded.
const LINE_CAPACITY: usize = 1024;

struct Config {
    routes: Vec<Route>,
    delay: Duration,
}

/// Connections accepted on `listen` go to `upstream`.
struct Route {
    listen: SocketAddr,
    upstream: Arc<[SocketAddr]>,
    upstream_name: String,
}

fn parse_args(args: &[String]) -> Result<Config, String> {
    let [listen, upstream, delay, more @ ..] = args else {
        return Err(format!("expected at least 3 arguments, got {}", args.len()));
    };
    if more.len() % 2 != 0 {
        return Err(format!(
            "every further LISTEN_ADDR needs its UPSTREAM_ADDR: {:?} has none",
            more[more.len() - 1]
        ));
    }
    let routes = [(listen, upstream)]
        .into_iter()
        .chain(more.chunks_exact(2).map(|pair| (&pair[0], &pair[1])))
        .map(|(listen, upstream)| {
            Ok(Route {
                listen: resolve(listen, "LISTEN_ADDR")?[0],
                upstream: resolve(upstream, "UPSTREAM_ADDR")?.into(),
                upstream_name: upstream.clone(),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let delay_us: u64 = delay
        .parse()
        .ok()
        .filter(|us| *us <= MAX_DELAY_US)
        .ok_or_else(|| {
            format!("DELAY_US must be an integer from 0 to {MAX_DELAY_US}, got {delay:?}")
        })?;
    Ok(Config {
        routes,
        delay: Duration::from_micros(delay_us),
    })
}

/// `HOST:PORT` to addresses; never an empty list.
fn resolve(addr: &str, name: &str) -> Result<Vec<SocketAddr>, String> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| format!("{name} {addr:?} is not a HOST:PORT address: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{name} {addr:?} resolves to no address"));
    }
    Ok(addrs)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let config = match parse_args(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("delay_proxy: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("delay_proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("delay_proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Binds every route, then accepts connections on all of them until ctrl-c or SIGTERM.
async fn serve(config: Config) -> io::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut acceptors = JoinSet::new();
    for route in config.routes {
        let listener = TcpListener::bind(route.listen).await.map_err(|e| {
            io::Error::new(e.kind(), format!("cannot listen on {}: {e}", route.listen))
        })?;
        println!(
            "listening on {}, upstream {}, one-way delay {} us",
            listener.local_addr()?,
            route.upstream_name,
            config.delay.as_micros()
        );
        acceptors.spawn(accept(listener, route.upstream, config.delay));
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    eprintln!("delay_proxy: stopping");
    Ok(())
}

/// Proxies every connection `listener` accepts to `upstream`, each on a task of its own.
async fn accept(listener: TcpListener, upstream: Arc<[SocketAddr]>, delay: Duration) {
    loop {
        match listener.accept().await {
            Ok((client, peer)) => {
                let upstream = Arc::clone(&upstream);
                tokio::spawn(async move {
                    if let Err(e) = proxy(client, &upstream, delay).await {
                        eprintln!("delay_proxy: connection from {peer}: {e}");
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors, most likely: do not spin on it.
                eprintln!("delay_proxy: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Connects `client` to the upstream and forwards both ways until both sides have closed, or
/// one half fails (then both connections are closed, and what was still in the line is lost).
async fn proxy(client: TcpStream, upstream: &[SocketAddr], delay: Duration) -> io::Result<()> {
    let server = TcpStream::connect(upstream)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot connect upstream: {e}")))?;
    // No Nagle: a chunk goes out when the line says so, not when the previous one is acked.
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let mut tasks = JoinSet::new();
    tasks.spawn(delay_line(client_read, server_write, delay));
    tasks.spawn(delay_line(server_read, client_write, delay));
    while let Some(done) = tasks.join_next().await {
        // On an error, dropping `tasks` aborts the others, which drops every half: both closed.
        done.map_err(io::Error::other)??;
    }
    Ok(())
}

/// A chunk in the line: its bytes, or EOF when empty, and when it may leave.
struct Segment {
    due: Instant,
    bytes: Vec<u8>,
}

/// One direction of the link: reads chunks as they come and queues each with its due time, and
/// writes the chunk at the head of the queue once it is due; EOF, once due, shuts down the write
/// half. A write (of a chunk already due) is the only thing that holds up reading, and only
/// while the receiving side's socket buffer is full. A chunk is stamped when it is read, so the
/// proxy's own latency in reading it adds to the delay: `LINGER` keeps that to microseconds.
async fn delay_line(
    mut read: OwnedReadHalf,
    mut write: OwnedWriteHalf,
    delay: Duration,
) -> io::Result<()> {
    let mut line: VecDeque<Segment> = VecDeque::new();
    let mut buf = vec![0; CHUNK];
    let mut reading = true;
    // Until when the line keeps spinning after its last write, if it is empty (see `LINGER`).
    let mut linger_until: Option<Instant> = None;
    loop {
        let head = line.front().map(|segment| segment.due);
        let linger = linger_until.filter(|until| head.is_none() && *until > Instant::now());
        tokio::select! {
            // A due chunk goes first, so that a stream of reads cannot hold it back.
            biased;
            () = wait_until(head.unwrap_or_else(Instant::now)), if head.is_some() => {
                let Some(Segment { bytes, .. }) = line.pop_front() else { continue };
                if bytes.is_empty() {
                    return write.shutdown().await;
                }
                write.write_all(&bytes).await?;
                linger_until = Some(Instant::now() + LINGER);
            }
            () = wait_until(linger.unwrap_or_else(Instant::now)), if linger.is_some() => {
                linger_until = None;
            }
            n = read.read(&mut buf), if reading && line.len() < LINE_CAPACITY => {
                let n = n?;
                let due = Instant::now() + delay;
                line.push_back(Segment { due, bytes: buf[..n].to_vec() });
                reading = n != 0;
            }
            // Not reached: a line that has stopped reading holds its EOF until it returns.
            else => return Ok(()),
        }
    }
}

/// Returns once `Instant::now() >= due`, within microseconds: tokio's millisecond timer for all
/// but the last `SPIN_WINDOW`, then a spin that yields to the runtime's other tasks each turn.
async fn wait_until(due: Instant) {
    if let Some(coarse) = due.checked_sub(SPIN_WINDOW) {
        if coarse > Instant::now() {
            tokio::time::sleep_until(coarse.into()).await;
        }
    }
    while Instant::now() < due {
        tokio::task::yield_now().await;
    }
}

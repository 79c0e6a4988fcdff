//! xDS at scale (issue 26): the control-plane side of `benches/load/xds.sh`.
//!
//! A scripted ADS server (`weir_tests::xds`, in this process) holds CLUSTERS EDS clusters of
//! ENDPOINTS endpoints each, one listener on LISTEN whose routes (RDS) send `/` to `c0`, and `c0`'s
//! endpoints are the real backends (BACKENDS); the other clusters' endpoints are addresses nothing
//! listens on (nothing connects to them without traffic or health checks). A release weir
//! (WEIR_BIN) follows it. The driver measures:
//!
//! 1. Start-up: time from spawning weir to `/ready` answering 200 (polled every 5 ms), RSS one
//!    second after ready and the CPU spent, for 0 clusters, CLUSTERS × 1 and CLUSTERS ×
//!    ENDPOINTS (STARTS times each), and weir's xDS log lines with their offsets (where the
//!    time goes). STARTUP_ONLY=1 stops there.
//! 2. Endpoint updates on an otherwise idle proxy: the time from `set()` of one
//!    `ClusterLoadAssignment` to weir's ACK of that version arriving (weir receives it, applies
//!    it through every worker, then ACKs), for an idle cluster (all its endpoints move) and for
//!    the loaded `c0` (the same backends, reordered, with new weights, so traffic keeps
//!    flowing); the CPU per update of weir's control thread, its workers and this process.
//! 3. A paced load (wrk, 20 connections, 2 ms pause after each response) through the listener,
//!    ROUNDS times each: with no updates, with UPDATES updates of the idle cluster, and with
//!    UPDATES updates of `c0`, spread over the run; p50 / p99 side by side, and the update
//!    latencies under that load. Then `/clusters` must show both series' last sets.
//!
//! Settings come from the environment (the script sets them); a summary table goes to stdout.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use weir_tests::resources::{self as res, Ep};
use weir_tests::xds::{AdsServer, any, types};
use weir_tests::{Admin, Weir};

/// How often `/ready` is asked while weir starts.
const READY_POLL: Duration = Duration::from_millis(5);
/// Longest start-up accepted before the run is abandoned.
const READY_LIMIT: Duration = Duration::from_secs(120);
/// Pause between two updates of an idle series (no load running).
const IDLE_GAP: Duration = Duration::from_millis(20);

struct Opts {
    clusters: usize,
    endpoints: usize,
    updates: usize,
    rounds: usize,
    starts: usize,
    duration: u64,
    workers: usize,
    mode: String,
    listen: SocketAddr,
    backends: Vec<SocketAddr>,
    wrk_script: String,
    run_dir: PathBuf,
    /// Stop after the start-ups (no updates, no load).
    startup_only: bool,
}

fn env_or<T: FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={v} does not parse")),
        Err(_) => Ok(default),
    }
}

impl Opts {
    fn from_env() -> anyhow::Result<Opts> {
        let backends: Vec<SocketAddr> = std::env::var("BACKENDS")
            .context("BACKENDS (comma-separated addresses of the real backends) is required")?
            .split(',')
            .map(|a| a.trim().parse().with_context(|| format!("BACKENDS: {a}")))
            .collect::<anyhow::Result<_>>()?;
        let o = Opts {
            clusters: env_or("CLUSTERS", 1000)?,
            endpoints: env_or("ENDPOINTS", 10)?,
            updates: env_or("UPDATES", 100)?,
            rounds: env_or("ROUNDS", 3)?,
            starts: env_or("STARTS", 3)?,
            duration: env_or("DURATION", 10)?,
            workers: env_or("WORKERS", 2)?,
            mode: env_or("MODE", "delta".to_owned())?,
            listen: env_or("LISTEN", SocketAddr::from(([127, 0, 0, 1], 18190)))?,
            backends,
            wrk_script: std::env::var("WRK_SCRIPT")
                .context("WRK_SCRIPT (stats.lua) is required")?,
            run_dir: env_or("RUN_DIR", PathBuf::from("/tmp/weir-xds-bench"))?,
            startup_only: env_or("STARTUP_ONLY", 0u8)? != 0,
        };
        if o.clusters < 2 || o.endpoints == 0 || o.updates == 0 || o.rounds == 0 || o.starts == 0 {
            bail!("CLUSTERS must be at least 2, ENDPOINTS, UPDATES, ROUNDS and STARTS at least 1");
        }
        if o.backends.len() < o.endpoints {
            bail!(
                "c0 has {} endpoints: BACKENDS names {}",
                o.endpoints,
                o.backends.len()
            );
        }
        if std::env::var_os("WEIR_BIN").is_none() {
            bail!("WEIR_BIN (the release weir) is required");
        }
        Ok(o)
    }

    /// The idle cluster whose endpoints the first update series replaces.
    fn idle_cluster(&self) -> String {
        name(self.clusters / 2)
    }
}

fn name(i: usize) -> String {
    format!("c{i}")
}

/// Endpoint `e` of idle cluster `c`: an address nothing listens on, distinct per cluster.
fn parked(c: usize, e: usize) -> SocketAddr {
    let ip = Ipv4Addr::new(127, 0, (c / 200 + 2) as u8, (c % 200 + 1) as u8);
    SocketAddr::from((ip, 20_000 + e as u16))
}

/// Update `i` of the idle series: every endpoint moves (nothing listens there either).
fn moved(i: usize, e: usize) -> SocketAddr {
    let ip = Ipv4Addr::new(127, 0, 9, ((e + i) % 250 + 1) as u8);
    SocketAddr::from((ip, 30_000 + e as u16))
}

/// Update `i` of the loaded series: `c0`'s backends, rotated by `i`, with weights 1–3.
fn reweighted(o: &Opts, i: usize) -> Vec<Ep> {
    let n = o.endpoints;
    (0..n)
        .map(|e| Ep {
            addr: o.backends[(e + i) % n],
            weight: 1 + ((e + i) % 3) as u32,
            priority: 0,
        })
        .collect()
}

/// Sets the whole world: `clusters` EDS clusters of `per` endpoints, the listener and its routes.
fn publish(ads: &AdsServer, o: &Opts, clusters: usize, per: usize) {
    let eps = |c: usize| -> Vec<Ep> {
        (0..per)
            .map(|e| Ep::from(if c == 0 { o.backends[e] } else { parked(c, e) }))
            .collect()
    };
    ads.set(
        types::CLUSTER,
        (0..clusters).map(|c| (name(c), any(&res::eds_cluster(&name(c))))),
    );
    ads.set(
        types::ENDPOINT,
        (0..clusters).map(|c| (name(c), any(&res::load_assignment(&name(c), eps(c))))),
    );
    ads.set(
        types::LISTENER,
        [(
            "main",
            any(&res::listener("main", o.listen, "routes", vec![])),
        )],
    );
    let routes = res::route_config("routes", vec![res::prefix_route("/", "c0")]);
    ads.set(types::ROUTE, [("routes", any(&routes))]);
}

fn manifest(o: &Opts, ads: &AdsServer) -> String {
    format!(
        "workers: {}
admin: {{ address: 127.0.0.1:0 }}
xds:
  server: {{ address: \"{}\" }}
  node: {{ id: bench, cluster: bench }}
  mode: {}
  initial_fetch_timeout: 60s
",
        o.workers,
        ads.addr(),
        o.mode
    )
}

/// A weir that reached `/ready`, with what its start-up cost.
struct Started {
    weir: Weir,
    /// Spawn → `weir: ready` on stdout (the static part serves; xDS starts).
    to_line: Duration,
    /// Spawn → `/ready` 200 (the first complete configuration from the control plane applied).
    to_ready: Duration,
    /// VmRSS one second after ready, KiB.
    rss: u64,
    /// CPU the process used up to then (every thread), ms.
    cpu: f64,
}

async fn start(o: &Opts, ads: &AdsServer) -> anyhow::Result<Started> {
    let mut t0 = Instant::now();
    let weir = Weir::start_with_hook(&manifest(o, ads), &[], &[], async |_, _| {
        t0 = Instant::now();
    })
    .await;
    let to_line = t0.elapsed();
    let admin = Admin::of(&weir);
    let to_ready = loop {
        let r = admin.request("GET", "/ready", None, b"").await;
        if r.status == 200 {
            break t0.elapsed();
        }
        if t0.elapsed() > READY_LIMIT {
            bail!(
                "not ready after {READY_LIMIT:?} ({}); stderr:\n{}",
                r.status,
                weir.stderr()
            );
        }
        tokio::time::sleep(READY_POLL).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = rss_kib(weir.pid())?;
    let cpu = process_cpu_ms(weir.pid())?;
    Ok(Started {
        weir,
        to_line,
        to_ready,
        rss,
        cpu,
    })
}

/// VmRSS of `pid`, KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// Weir's xDS log lines from `weir is serving` on, each with its offset from that line: where
/// the start-up time goes.
fn timeline(stderr: &str) -> String {
    // `2026-12-08T01:04:43.237962Z  INFO …`: the time of day is enough within one start-up.
    let secs = |line: &str| -> Option<f64> {
        let t = line.split_whitespace().next()?.split('T').nth(1)?;
        let mut hms = t.trim_end_matches('Z').split(':');
        let (h, m, s) = (hms.next()?, hms.next()?, hms.next()?);
        Some(
            h.parse::<f64>().ok()? * 3600.0
                + m.parse::<f64>().ok()? * 60.0
                + s.parse::<f64>().ok()?,
        )
    };
    let mut t0 = None;
    let mut out = String::from("weir's log, from `weir is serving`:");
    for line in stderr.lines() {
        let Some(t) = secs(line) else { continue };
        if line.contains("weir is serving") {
            t0 = Some(t);
        }
        let Some(t0) = t0 else { continue };
        if line.contains("xds:") || line.contains("weir is serving") {
            let text = line
                .split_whitespace()
                .skip(2)
                .collect::<Vec<_>>()
                .join(" ");
            out.push_str(&format!("\n  +{:6.1} ms  {text}", (t - t0) * 1e3));
        }
    }
    out
}

/// CPU time process `pid` has used (every thread, those gone included), ms (10 ms ticks).
fn process_cpu_ms(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let close = stat.rfind(')').context("no command in /proc/PID/stat")?;
    let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(ticks as f64 * 10.0)
}

/// CPU time weir's control thread (the main thread) and its workers have used so far, ms, from
/// `/proc/PID/task/*/stat` (10 ms ticks: meaningful over a series, not for one update).
fn cpu_ms(pid: u32) -> anyhow::Result<(f64, f64)> {
    let (mut control, mut workers) = (0.0, 0.0);
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?;
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue; // the thread has gone
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        // After the command: state (field 3), …, utime (14), stime (15).
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        let ms = ticks as f64 * 10.0;
        if task.file_name().to_str() == Some(pid.to_string().as_str()) {
            control += ms;
        } else if comm.starts_with("weir-worker") {
            workers += ms;
        }
    }
    Ok((control, workers))
}

/// Sets `cluster`'s endpoints as one new EDS version and waits for weir's ACK of it.
async fn update(ads: &AdsServer, cluster: &str, eps: Vec<Ep>) -> anyhow::Result<Duration> {
    let cla = any(&res::load_assignment(cluster, eps));
    let t = Instant::now();
    let v = ads.set(types::ENDPOINT, [(cluster, cla)]);
    let seen = ads
        .wait_for(|s| s.is_ack_of(types::ENDPOINT, &v) || s.is_nack_of(types::ENDPOINT, &v))
        .await?;
    let took = t.elapsed();
    if let Some((_, message)) = seen.error {
        bail!("weir refused endpoint version {v} of {cluster}: {message}");
    }
    Ok(took)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Series {
    /// No updates.
    Quiet,
    /// Updates of the idle cluster.
    Idle,
    /// Updates of the loaded `c0`.
    Loaded,
}

impl Series {
    fn label(self) -> &'static str {
        match self {
            Series::Quiet => "none",
            Series::Idle => "idle",
            Series::Loaded => "loaded",
        }
    }
}

/// Update `i` of `series`: (cluster, endpoints).
fn nth(o: &Opts, series: Series, i: usize) -> (String, Vec<Ep>) {
    match series {
        Series::Loaded => ("c0".to_owned(), reweighted(o, i)),
        _ => (
            o.idle_cluster(),
            (0..o.endpoints).map(|e| Ep::from(moved(i, e))).collect(),
        ),
    }
}

/// What wrk's `STATS` line says (latencies in µs).
#[derive(Clone, Copy, Debug, Default)]
struct Load {
    requests: u64,
    errors: u64,
    p50: u64,
    p99: u64,
    max: u64,
}

async fn wrk(o: &Opts, seconds: u64, label: &str) -> anyhow::Result<Load> {
    let run = tokio::process::Command::new("wrk")
        .env("WRK_DELAY_MS", "2")
        .args(["-t2", "-c20", &format!("-d{seconds}s"), "--latency", "-s"])
        .arg(&o.wrk_script)
        .arg(format!("http://{}/", o.listen))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(seconds + 30), run)
        .await
        .context("wrk did not finish")??;
    let text = String::from_utf8_lossy(&out.stdout);
    std::fs::write(o.run_dir.join(format!("wrk-{label}.txt")), text.as_bytes())?;
    let line = text
        .lines()
        .find(|l| l.starts_with("STATS "))
        .with_context(|| format!("no STATS line from wrk: {text}"))?;
    let mut l = Load::default();
    for kv in line.split_whitespace().skip(1) {
        let Some((k, v)) = kv.split_once('=') else {
            continue;
        };
        let v: u64 = v.parse().unwrap_or_default();
        match k {
            "requests" => l.requests = v,
            "errors" => l.errors = v,
            "p50" => l.p50 = v,
            "p99" => l.p99 = v,
            "max" => l.max = v,
            _ => {}
        }
    }
    Ok(l)
}

/// One paced run of `o.duration` seconds; with a series, its updates spread over the run.
async fn paced(
    o: &Opts,
    ads: &AdsServer,
    series: Series,
    label: &str,
) -> anyhow::Result<(Load, Vec<Duration>)> {
    let (load, times) = tokio::join!(wrk(o, o.duration, label), async {
        let mut times = Vec::with_capacity(o.updates);
        if series == Series::Quiet {
            return Ok(times);
        }
        // From 0.5 s in to 0.5 s before the end, on a fixed schedule.
        let begin = tokio::time::Instant::now() + Duration::from_millis(500);
        let gap = Duration::from_secs(o.duration).saturating_sub(Duration::from_secs(1))
            / o.updates as u32;
        for i in 0..o.updates {
            tokio::time::sleep_until(begin + gap * i as u32).await;
            let (cluster, eps) = nth(o, series, i);
            times.push(update(ads, &cluster, eps).await?);
        }
        anyhow::Ok(times)
    });
    Ok((load?, times?))
}

/// (median, p99, max) of `v`; p99 as the shared scripts take it (the ⌊0.99·n⌋-th smallest).
fn spread(v: &mut [Duration]) -> (Duration, Duration, Duration) {
    v.sort();
    let n = v.len();
    let at = |i: usize| v[i.min(n - 1)];
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    };
    (median, at((n * 99 / 100).max(1) - 1), at(n - 1))
}

fn median_u64(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{}", d.as_micros())
}

/// Checks that the last updates of both series are what weir serves (`/clusters`).
async fn check_served(o: &Opts, weir: &Weir, last: usize) -> anyhow::Result<()> {
    let clusters = Admin::of(weir).get_json("/clusters").await;
    let list = clusters["clusters"]
        .as_array()
        .context("/clusters has no list")?;
    if list.len() != o.clusters {
        bail!(
            "/clusters lists {} clusters, not {}",
            list.len(),
            o.clusters
        );
    }
    for series in [Series::Idle, Series::Loaded] {
        let (cluster, want) = nth(o, series, last);
        let c = list
            .iter()
            .find(|c| c["name"] == cluster.as_str())
            .with_context(|| format!("{cluster} is not served"))?;
        let got: Vec<(String, u64)> = c["endpoints"]
            .as_array()
            .context("no endpoints")?
            .iter()
            .map(|e| {
                (
                    e["address"].as_str().unwrap_or_default().to_owned(),
                    e["weight"].as_u64().unwrap_or_default(),
                )
            })
            .collect();
        let mut want: Vec<(String, u64)> = want
            .iter()
            .map(|e| (e.addr.to_string(), u64::from(e.weight)))
            .collect();
        let mut got_sorted = got.clone();
        got_sorted.sort();
        want.sort();
        if got_sorted != want {
            bail!("{cluster} serves {got:?}, the last update set {want:?}");
        }
    }
    Ok(())
}

/// The summary's start-up rows: time to ready and RSS of each world, per cluster and endpoint.
fn startup_rows(o: &Opts, worlds: &[Vec<(Duration, u64)>]) -> Vec<String> {
    let (n, per) = (o.clusters, o.endpoints);
    let mut rows = Vec::new();
    // The script's second pass sets it (freed pages go back at once: RSS closer to what is live).
    let alloc = std::env::var("MIMALLOC_PURGE_DELAY")
        .map(|v| format!(", MIMALLOC_PURGE_DELAY={v}"))
        .unwrap_or_default();
    let mut ready: Vec<Vec<Duration>> = worlds
        .iter()
        .map(|w| w.iter().map(|x| x.0).collect())
        .collect();
    let rss: Vec<u64> = worlds
        .iter()
        .map(|w| median_u64(w.iter().map(|x| x.1).collect()))
        .collect();
    let ready: Vec<String> = ready
        .iter_mut()
        .map(|r| {
            let (m, _, max) = spread(r);
            format!("{} ({})", ms(m), ms(max))
        })
        .collect();
    rows.push(format!(
        "| time to ready: 0 / {n}×1 / {n}×{per} (median (max) of {}{alloc}) | {} ms |",
        o.starts,
        ready.join(" / ")
    ));
    rows.push(format!(
        "| RSS after ready: 0 / {n}×1 / {n}×{per} (median of {}{alloc}) | {} / {} / {} KiB |",
        o.starts, rss[0], rss[1], rss[2]
    ));
    // Per cluster and endpoint only from RSS near what is live (see `alloc`): the default RSS
    // differs between identical starts by more than 1,000 clusters take.
    if per > 1 && !alloc.is_empty() {
        let ep = (rss[2] as f64 - rss[1] as f64) * 1024.0 / (n * (per - 1)) as f64;
        let cl = (rss[1] as f64 - rss[0] as f64) * 1024.0 / n as f64 - ep;
        rows.push(format!(
            "| per endpoint / per cluster (besides its endpoints{alloc}) | {ep:.0} B / {cl:.0} B |"
        ));
    }
    rows
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let o = Opts::from_env()?;
    std::fs::create_dir_all(&o.run_dir)?;
    let (n, per) = (o.clusters, o.endpoints);
    println!(
        "# xDS scale: {n} clusters × {per} endpoints, {} workers, {} ADS, {} updates, {} rounds × {} s",
        o.workers, o.mode, o.updates, o.rounds, o.duration
    );

    // 1. Start-up and memory: every world STARTS times (RSS after the same start-up varies by
    // tens of MB from run to run: the allocator's retention, not what is live); the last start
    // of the full world stays for the rest.
    let shapes = [(0, 0), (n, 1), (n, per)];
    let mut worlds: Vec<Vec<(Duration, u64)>> = vec![Vec::new(); shapes.len()];
    let mut kept = None;
    for k in 0..o.starts {
        for (w, &(clusters, each)) in shapes.iter().enumerate() {
            let ads = AdsServer::start().await?;
            publish(&ads, &o, clusters, each);
            let s = start(&o, &ads).await?;
            println!(
                "start {clusters}×{each} #{} (pid {}): `weir: ready` {} ms, /ready 200 {} ms, RSS {} KiB, CPU {} ms",
                k + 1,
                s.weir.pid(),
                ms(s.to_line),
                ms(s.to_ready),
                s.rss,
                s.cpu
            );
            worlds[w].push((s.to_ready, s.rss));
            let log = o
                .run_dir
                .join(format!("weir-start-{clusters}x{each}-{k}.err"));
            std::fs::write(log, s.weir.stderr())?;
            if w + 1 == shapes.len() && k + 1 == o.starts {
                kept = Some((ads, s));
            }
        }
    }
    let (ads, started) = kept.expect("STARTS is at least 1");
    println!("{}", timeline(&started.weir.stderr()));
    if o.startup_only {
        for row in startup_rows(&o, &worlds) {
            println!("{row}");
        }
        return Ok(());
    }
    let weir = &started.weir;

    // 2. Updates on an otherwise quiet proxy.
    let mut quiet_times = Vec::new();
    let mut quiet_cpu = Vec::new();
    for series in [Series::Idle, Series::Loaded] {
        let mut times = Vec::with_capacity(o.updates);
        let cpu = cpu_ms(weir.pid())?;
        let own = process_cpu_ms(std::process::id())?;
        for i in 0..o.updates {
            let (cluster, eps) = nth(&o, series, i);
            times.push(update(&ads, &cluster, eps).await?);
            tokio::time::sleep(IDLE_GAP).await;
        }
        let after = cpu_ms(weir.pid())?;
        let own = process_cpu_ms(std::process::id())? - own;
        let per = |a: f64, b: f64| (a - b) / o.updates as f64;
        quiet_cpu.push((
            per(after.0, cpu.0),
            per(after.1, cpu.1),
            own / o.updates as f64,
        ));
        quiet_times.push((series, times));
    }
    check_served(&o, weir, o.updates - 1).await?;

    // 3. Paced load: without updates and with each series, order rotated per round.
    wrk(&o, 2, "warmup").await?;
    let order = [Series::Quiet, Series::Idle, Series::Loaded];
    let mut loads: Vec<(Series, Load)> = Vec::new();
    let mut load_times: Vec<(Series, Vec<Duration>)> =
        vec![(Series::Idle, Vec::new()), (Series::Loaded, Vec::new())];
    for r in 0..o.rounds {
        let mut row = Vec::new();
        for k in 0..order.len() {
            let series = order[(k + r) % order.len()];
            let label = format!("{}-{r}", series.label());
            let (load, times) = paced(&o, &ads, series, &label).await?;
            if let Some((_, all)) = load_times.iter_mut().find(|(s, _)| *s == series) {
                all.extend(times);
            }
            row.push(format!(
                "{}: {} / {} µs ({} req, {} errors)",
                series.label(),
                load.p50,
                load.p99,
                load.requests,
                load.errors
            ));
            loads.push((series, load));
        }
        println!("round {}: {}", r + 1, row.join("; "));
    }
    check_served(&o, weir, o.updates - 1).await?;
    std::fs::write(o.run_dir.join("weir-scale.err"), weir.stderr())?;

    // The summary.
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    for row in startup_rows(&o, &worlds) {
        println!("{row}");
    }
    let idle = o.idle_cluster();
    for (under, sets) in [
        ("no load", &mut quiet_times),
        ("paced load", &mut load_times),
    ] {
        for (series, times) in sets.iter_mut() {
            let what = match series {
                Series::Loaded => "c0 (loaded), reweighted".to_owned(),
                _ => format!("{idle} (idle), all moved"),
            };
            let (m, p99, max) = spread(times);
            println!(
                "| update → ACK, {what}, {under} (median / p99 / max of {}) | {} / {} / {} µs |",
                times.len(),
                us(m),
                us(p99),
                us(max)
            );
        }
    }
    for ((series, _), (control, workers, server)) in quiet_times.iter().zip(&quiet_cpu) {
        let what = match series {
            Series::Loaded => "c0",
            _ => idle.as_str(),
        };
        println!(
            "| CPU per update of {what}, no load: weir's control thread / both workers / the ADS server (this driver) | {control:.2} / {workers:.2} / {server:.2} ms |"
        );
    }
    for series in order {
        let of: Vec<Load> = loads
            .iter()
            .filter(|(s, _)| *s == series)
            .map(|(_, l)| *l)
            .collect();
        let what = match series {
            Series::Quiet => "no updates".to_owned(),
            Series::Idle => format!("{} updates of {idle}", o.updates),
            Series::Loaded => format!("{} updates of c0", o.updates),
        };
        let p99s: Vec<String> = of.iter().map(|l| l.p99.to_string()).collect();
        println!(
            "| paced load p50 / p99, {what} (median of {}; p99 per round) | {} / {} µs ({}; errors {}) |",
            of.len(),
            median_u64(of.iter().map(|l| l.p50).collect()),
            median_u64(of.iter().map(|l| l.p99).collect()),
            p99s.join(", "),
            of.iter().map(|l| l.errors).sum::<u64>()
        );
    }
    Ok(())
}

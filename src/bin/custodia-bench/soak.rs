//! The soak: a mixed load (nine masked reads to one create) held at a fraction of the measured
//! peak for many minutes, with throughput, p99 latency, server CPU per request and resident
//! memory written per interval — so that a leak, a slow growth of latency or a throughput
//! decay shows as a slope.
//!
//! The load is paced: requests are due at evenly spaced times, each taken by whichever of the
//! connections is free (as from a client's connection pool), and a request's latency is
//! counted from when it was due, not from when it was sent (a server that stalls cannot hide
//! the wait it caused).
//!
//! Owns: pacing and per-interval figures. Must never: run in the server's process.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::driver::{Connection, MakeRequest};
use super::probe;

/// Connections of the closed-loop load whose peak the soak's target is a share of.
pub const PEAK_CONNECTIONS: usize = 64;

/// The peak the soak's target is a share of: the closed-loop peak, and (unless `--soak-peak
/// closed`) the highest paced rate the vault then kept up with.
#[derive(Clone, Debug)]
pub struct Peak {
    /// Closed loop: requests answered per second over the whole measurement.
    pub per_second: f64,
    /// How long it was measured: long enough to include the database's steady-state costs
    /// (WAL checkpoints, B-tree growth), which a few seconds on a fresh database do not.
    pub seconds: f64,
    /// The paced steps tried, from the closed-loop peak down, the last one kept up with;
    /// empty when the target is a share of the closed-loop peak.
    pub paced: Vec<Step>,
    /// Seconds per paced step.
    pub step_seconds: f64,
    /// The p99 (ms, from the due time) a paced step had to stay within to count as kept up.
    pub p99_budget_ms: f64,
}

impl Peak {
    /// What the soak's target is a share of: the paced peak when it was searched for.
    pub fn reference(&self) -> f64 {
        self.paced.iter().find(|s| s.kept_up).map_or(self.per_second, |s| s.rate)
    }
}

/// One step of the paced peak's search.
#[derive(Clone, Debug)]
pub struct Step {
    pub rate: f64,
    pub completed_per_second: f64,
    pub p99_ms: f64,
    pub errors: usize,
    pub kept_up: bool,
}

/// A paced step is kept up with when this share of its rate completed within the step...
const KEPT_UP_SHARE: f64 = 0.98;
/// ...with no error, and its p99 (from the due time) stayed within a budget (`--soak-peak-p99-ms`,
/// by default 250 ms: above it, a backlog was building).
pub const KEPT_UP_P99_MS: f64 = 250.0;
/// The search steps down by this share of the closed-loop peak...
const STEP_DOWN: f64 = 0.05;
/// ...and gives up below this share of it.
const LOWEST_SHARE: f64 = 0.3;

/// The paced peak: paced steps of `step` each (the soak's own load: its pool of `connections`,
/// requests due at evenly spaced times), from the closed-loop peak down by 5 % of it, until one
/// is kept up with. A closed loop of a few dozen connections keeps the server saturated, where
/// it batches best (many ready sockets per wake-up, large group commits); a paced load at the
/// same rate arrives spread out and costs more per request, so 80 % of the closed-loop peak can
/// be more than a paced load is served at (measured: 12,648 req/s closed loop on one core, 8,600
/// paced). Each step drains before the next starts. Returns the steps tried; the last one was
/// kept up with unless none was down to 30 % of the closed-loop peak.
pub async fn paced_peak(
    addr: std::net::SocketAddr,
    pid: u32,
    make: MakeRequest,
    closed_per_second: f64,
    connections: usize,
    step: Duration,
    p99_budget_ms: f64,
) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut share = 1.0;
    while share >= LOWEST_SHARE - 1e-9 {
        let rate = closed_per_second * share;
        let plan = Plan { target_per_second: rate, intervals: 1, interval: step, connections };
        let (intervals, _) = run(addr, pid, make.clone(), &plan).await;
        let Some(i) = intervals.first() else { break };
        let kept_up = kept_up(rate, i, p99_budget_ms);
        eprintln!(
            "soak: paced step at {rate:.0} req/s: {:.0} completed per second, p99 {:.1} ms, {} errors: {}",
            i.per_second,
            i.p99_ms,
            i.errors,
            if kept_up { "kept up" } else { "fell behind" }
        );
        steps.push(Step { rate, completed_per_second: i.per_second, p99_ms: i.p99_ms, errors: i.errors, kept_up });
        if kept_up {
            break;
        }
        share -= STEP_DOWN;
    }
    steps
}

fn kept_up(rate: f64, step: &Interval, p99_budget_ms: f64) -> bool {
    step.errors == 0 && step.per_second >= KEPT_UP_SHARE * rate && step.p99_ms <= p99_budget_ms
}

/// One interval's figures.
#[derive(Clone, Debug, Default)]
pub struct Interval {
    pub index: usize,
    /// Requests due in the interval and answered with success.
    pub requests: usize,
    pub errors: usize,
    /// Requests completed during the interval, per second (falls when the server falls behind).
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// p99 of the server's own answer time (request sent to answer read), without any wait for
    /// a free connection: when it stays low while `p99_ms` climbs, the backlog is in the
    /// driver's pool, not in the server.
    pub service_p99_ms: f64,
    pub cpu_us: f64,
    pub rss_mb: f64,
    /// The load driver's own CPU per request (it shares the machine with the server).
    pub driver_cpu_us: f64,
    /// Per cent of the machine's CPU time left idle (all cores, iowait counted as idle).
    pub idle_per_cent: f64,
    /// The server's live threads at the interval's end (each holds a stack and, with glibc, may
    /// hold a malloc arena: a source of resident memory that is not the data's).
    pub threads: usize,
    /// The server thread that used the most CPU in the interval, with its share of one core.
    pub busiest: Option<(String, f64)>,
}

/// Each second of the soak: requests completed in it, and the longest latency among them (µs).
/// Where the per-interval p99 says that the load stalled, this says when and for how long.
#[derive(Default)]
pub struct Second {
    pub completed: AtomicU64,
    pub max_latency_us: AtomicU64,
}

/// The soak's plan.
pub struct Plan {
    pub target_per_second: f64,
    pub intervals: usize,
    pub interval: Duration,
    /// Connections of the paced load (a pool: each sends one request at a time).
    pub connections: usize,
}

struct Bucket {
    /// Latencies of the requests due in this interval.
    latencies: Vec<Duration>,
    /// Answer times of the same requests, in µs.
    service_us: Vec<u32>,
    errors: usize,
    /// Requests completed in this interval, whenever they were due: the service rate.
    completed: usize,
}

/// Runs the paced load for the whole plan; returns one entry per interval, and one per second.
pub async fn run(
    addr: std::net::SocketAddr,
    pid: u32,
    make: MakeRequest,
    plan: &Plan,
) -> (Vec<Interval>, Arc<Vec<Second>>) {
    let buckets: Arc<Vec<Mutex<Bucket>>> = Arc::new(
        (0..plan.intervals)
            .map(|_| Mutex::new(Bucket { latencies: Vec::new(), service_us: Vec::new(), errors: 0, completed: 0 }))
            .collect(),
    );
    let start = Instant::now() + Duration::from_millis(100);
    let total = plan.interval * plan.intervals as u32;
    let seconds: Arc<Vec<Second>> = Arc::new((0..total.as_secs() as usize).map(|_| Second::default()).collect());
    // One schedule shared by the connections: whichever is free takes the next due request
    // (a client's connection pool). A connection held up by a slow answer does not delay the
    // requests due after it while another is free; when none is, they wait, and the wait counts.
    let gap = Duration::from_secs_f64(1.0 / plan.target_per_second.max(1.0));
    let slots = (total.as_secs_f64() / gap.as_secs_f64()).floor() as u64;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..plan.connections.max(1) {
        let (make, buckets, seconds, interval) = (make.clone(), buckets.clone(), seconds.clone(), plan.interval);
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Connection::new(addr);
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= slots {
                    return;
                }
                let due = start + gap.mul_f64(k as f64);
                tokio::time::sleep_until(due.into()).await;
                let request = make(k as usize);
                let sent = Instant::now();
                let outcome = conn.send(&request).await;
                let service = sent.elapsed();
                let latency = due.elapsed();
                let index = ((due - start).as_secs_f64() / interval.as_secs_f64()) as usize;
                if let Some(bucket) = buckets.get(index) {
                    let mut b = bucket.lock().unwrap_or_else(|p| p.into_inner());
                    match outcome {
                        Ok(200 | 201) => {
                            b.latencies.push(latency);
                            b.service_us.push(u32::try_from(service.as_micros()).unwrap_or(u32::MAX));
                        }
                        _ => b.errors += 1,
                    }
                }
                // Completions after the plan's end (a backlog draining) belong to no interval.
                let done = (start.elapsed().as_secs_f64() / interval.as_secs_f64()) as usize;
                if let Some(bucket) = buckets.get(done) {
                    bucket.lock().unwrap_or_else(|p| p.into_inner()).completed += 1;
                }
                if let Some(second) = seconds.get(start.elapsed().as_secs() as usize) {
                    second.completed.fetch_add(1, Ordering::Relaxed);
                    second.max_latency_us.fetch_max(latency.as_micros() as u64, Ordering::Relaxed);
                }
            }
        }));
    }
    // The server's CPU and memory, the driver's CPU and the machine's idle time at each
    // interval's end.
    let driver = std::process::id();
    let mut samples = Vec::with_capacity(plan.intervals + 1);
    let mut driver_samples = Vec::with_capacity(plan.intervals + 1);
    let mut machine = Vec::with_capacity(plan.intervals + 1);
    samples.push(probe::sample(pid));
    driver_samples.push(probe::sample(driver));
    machine.push(probe::machine_ticks());
    let mut memory = Vec::with_capacity(plan.intervals);
    for i in 1..=plan.intervals {
        tokio::time::sleep_until((start + plan.interval * i as u32).into()).await;
        samples.push(probe::sample(pid));
        driver_samples.push(probe::sample(driver));
        machine.push(probe::machine_ticks());
        memory.push(probe::resident_mb(pid).unwrap_or(0.0));
        eprintln!("soak: interval {i}/{} done", plan.intervals);
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut out = Vec::with_capacity(plan.intervals);
    for (i, bucket) in buckets.iter().enumerate() {
        let mut b = bucket.lock().unwrap_or_else(|p| p.into_inner());
        b.latencies.sort();
        b.service_us.sort_unstable();
        let n = b.latencies.len();
        // The rank of quantile `p` among the `n` sorted figures (both lists have one per request).
        let rank = |p: f64| (((n - 1) as f64) * p).round() as usize;
        let pick = |p: f64| if n == 0 { 0.0 } else { b.latencies[rank(p)].as_secs_f64() * 1000.0 };
        let service_p99_ms = if n == 0 { 0.0 } else { f64::from(b.service_us[rank(0.99)]) / 1000.0 };
        let cpu = |samples: &[Option<probe::Sample>]| match (&samples[i], &samples[i + 1]) {
            (Some(a), Some(z)) => probe::per_request(a, z, b.completed).cpu_us,
            _ => 0.0,
        };
        let idle_per_cent = match (machine[i], machine[i + 1]) {
            (Some(a), Some(z)) => probe::idle_per_cent(a, z),
            _ => 0.0,
        };
        out.push(Interval {
            index: i + 1,
            requests: n,
            errors: b.errors,
            per_second: b.completed as f64 / plan.interval.as_secs_f64(),
            p50_ms: pick(0.5),
            p99_ms: pick(0.99),
            service_p99_ms,
            cpu_us: cpu(&samples),
            rss_mb: memory.get(i).copied().unwrap_or(0.0),
            driver_cpu_us: cpu(&driver_samples),
            idle_per_cent,
            threads: samples[i + 1].as_ref().map_or(0, probe::Sample::threads),
            busiest: match (&samples[i], &samples[i + 1]) {
                (Some(a), Some(z)) => probe::busiest_thread(a, z, plan.interval),
                _ => None,
            },
        });
    }
    (out, seconds)
}

/// The per-second trace as a table (tab-separated): second, requests completed, longest latency.
pub fn seconds_tsv(seconds: &[Second]) -> String {
    let mut out = String::from("second\tcompleted\tmax_latency_ms\n");
    for (i, s) in seconds.iter().enumerate() {
        let _ = writeln!(
            out,
            "{}\t{}\t{:.1}",
            i + 1,
            s.completed.load(Ordering::Relaxed),
            s.max_latency_us.load(Ordering::Relaxed) as f64 / 1000.0
        );
    }
    out
}

/// Seconds in which fewer than half the target completed (the server stalled), and the longest
/// run of them.
pub fn stalls(seconds: &[Second], target_per_second: f64) -> (usize, usize) {
    let (mut count, mut run, mut longest) = (0, 0, 0);
    for s in seconds {
        if (s.completed.load(Ordering::Relaxed) as f64) < target_per_second / 2.0 {
            count += 1;
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    (count, longest)
}

/// Largest relative distance from the mean, in per cent.
fn spread(values: impl Iterator<Item = f64> + Clone) -> f64 {
    let n = values.clone().count().max(1) as f64;
    let mean = values.clone().sum::<f64>() / n;
    values.map(|v| ((v - mean) / mean.max(1e-9)).abs() * 100.0).fold(0.0, f64::max)
}

/// The change over the run along a robust line (Theil–Sen: the median of the slopes between
/// every two intervals), from the first interval to the last, in per cent of the median. A
/// leak or a slow growth shows here; a single slow minute does not move it (the verdict of
/// [`spread`] is the one that catches those).
fn trend(values: &[f64]) -> f64 {
    let median = |mut v: Vec<f64>| -> f64 {
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => 0.0,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    };
    let slopes: Vec<f64> = (0..values.len())
        .flat_map(|i| (i + 1..values.len()).map(move |j| (values[j] - values[i]) / (j - i) as f64))
        .collect();
    let level = median(values.to_vec());
    median(slopes) * values.len().saturating_sub(1) as f64 / level.max(1e-9) * 100.0
}

/// The results file: the plan, a line per interval and the flatness verdicts.
pub fn report(peak: &Peak, plan: &Plan, intervals: &[Interval], header: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{header}");
    let _ = writeln!(
        out,
        "Peak (mixed load, {PEAK_CONNECTIONS} connections, closed loop, measured over {:.0} s): {:.0} req/s.",
        peak.seconds, peak.per_second,
    );
    if let Some(last) = peak.paced.last() {
        let _ = writeln!(
            out,
            "Paced peak (the soak's own paced load, {:.0} s steps from the closed-loop peak down by {:.0} % of it; kept up with: \
             at least {:.0} % of the rate completed, p99 at most {:.0} ms, no error): {}.\n",
            peak.step_seconds,
            STEP_DOWN * 100.0,
            KEPT_UP_SHARE * 100.0,
            peak.p99_budget_ms,
            if last.kept_up { format!("{:.0} req/s", last.rate) } else { "none kept up with".to_owned() }
        );
        out.push_str("| paced step req/s | completed per second | p99 ms | errors | |\n|---:|---:|---:|---:|:---|\n");
        for s in &peak.paced {
            let _ = writeln!(
                out,
                "| {:.0} | {:.0} | {:.1} | {} | {} |",
                s.rate,
                s.completed_per_second,
                s.p99_ms,
                s.errors,
                if s.kept_up { "kept up" } else { "fell behind" }
            );
        }
    }
    let _ = writeln!(
        out,
        "\nSoak target {:.0} req/s ({:.0} % of the {} peak), {} intervals of {} s, {} paced connections; latency counted \
         from each request's due time (\"service\": from when it was sent).\n",
        plan.target_per_second,
        plan.target_per_second / peak.reference().max(1e-9) * 100.0,
        if peak.paced.iter().any(|s| s.kept_up) { "paced" } else { "closed-loop" },
        plan.intervals,
        plan.interval.as_secs(),
        plan.connections
    );
    out.push_str(
        "| interval | requests due | req/s completed | errors | p50 ms | p99 ms | service p99 ms | server CPU µs/req \
         | RSS MB | server threads | busiest thread (% of a core) | driver CPU µs/req | machine idle % |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---|---:|---:|\n",
    );
    for i in intervals {
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} | {} | {} | {:.1} | {:.1} |",
            i.index,
            i.requests,
            i.per_second,
            i.errors,
            i.p50_ms,
            i.p99_ms,
            i.service_p99_ms,
            i.cpu_us,
            i.rss_mb,
            i.threads,
            i.busiest.as_ref().map_or_else(|| "-".to_owned(), |(name, share)| format!("{name} ({share:.0})")),
            i.driver_cpu_us,
            i.idle_per_cent
        );
    }
    // The first interval warms caches and pools; flatness is judged on the rest.
    let steady = if intervals.len() > 2 { &intervals[1..] } else { intervals };
    let (tput, p99, rss) = (
        spread(steady.iter().map(|i| i.per_second)),
        spread(steady.iter().map(|i| i.p99_ms)),
        spread(steady.iter().map(|i| i.rss_mb)),
    );
    let verdict = |s: f64| if s <= 10.0 { "flat within 10 %" } else { "NOT flat within 10 %" };
    let errors: usize = intervals.iter().map(|i| i.errors).sum();
    let _ = writeln!(
        out,
        "\nFrom interval 2 on, largest distance from the mean: throughput {tput:.1} % ({}), p99 {p99:.1} % ({}), \
         resident memory {rss:.1} % ({}). Errors: {errors}.",
        verdict(tput),
        verdict(p99),
        verdict(rss)
    );
    let series = |f: fn(&Interval) -> f64| steady.iter().map(f).collect::<Vec<_>>();
    let _ = writeln!(
        out,
        "Trend from interval 2 to the last (robust line, change in per cent of the median; a slope, not the verdict): \
         throughput {:+.1} %, p99 {:+.1} %, resident memory {:+.1} %, server CPU per request {:+.1} %.",
        trend(&series(|i| i.per_second)),
        trend(&series(|i| i.p99_ms)),
        trend(&series(|i| i.rss_mb)),
        trend(&series(|i| i.cpu_us)),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval(index: usize, per_second: f64, p99_ms: f64) -> Interval {
        Interval {
            index,
            requests: 100,
            per_second,
            p99_ms,
            service_p99_ms: 1.0,
            rss_mb: 50.0,
            busiest: Some(("audit-writer".into(), 42.0)),
            ..Default::default()
        }
    }

    #[test]
    fn the_report_judges_from_the_second_interval_on() {
        let plan = Plan { target_per_second: 100.0, intervals: 3, interval: Duration::from_secs(60), connections: 8 };
        // The first interval (warm-up) is far off and ignored; the p99 of the third is not.
        let text = report(
            &Peak {
                per_second: 125.0,
                seconds: 60.0,
                paced: Vec::new(),
                step_seconds: 20.0,
                p99_budget_ms: KEPT_UP_P99_MS,
            },
            &plan,
            &[interval(1, 10.0, 2.0), interval(2, 100.0, 2.0), interval(3, 101.0, 5.0)],
            "h",
        );
        assert!(text.contains("throughput 0.5 % (flat within 10 %)"), "{text}");
        assert!(text.contains("p99 42.9 % (NOT flat within 10 %)"), "{text}");
        assert!(text.contains("8 paced connections"), "{text}");
        assert!(text.contains("measured over 60 s): 125 req/s."), "{text}");
        assert!(text.contains("Soak target 100 req/s (80 % of the closed-loop peak)"), "{text}");
        let row = text.lines().find(|l| l.starts_with("| 2 |")).unwrap_or_default();
        assert_eq!(row.matches('|').count(), 14, "{row}");
        assert!(row.contains("audit-writer (42)"), "{row}");
    }

    /// With a paced peak, the target is a share of it, and each step tried is listed.
    #[test]
    fn the_report_names_the_paced_peak_and_its_steps() {
        let step = |rate: f64, completed: f64, p99_ms: f64| Step {
            rate,
            completed_per_second: completed,
            p99_ms,
            errors: 0,
            kept_up: kept_up(rate, &Interval { per_second: completed, p99_ms, ..Default::default() }, KEPT_UP_P99_MS),
        };
        let peak = Peak {
            per_second: 1000.0,
            seconds: 60.0,
            // Too few completed; then enough completed but a backlog building; then kept up.
            paced: vec![step(1000.0, 900.0, 40.0), step(950.0, 940.0, 600.0), step(900.0, 899.0, 30.0)],
            step_seconds: 20.0,
            p99_budget_ms: KEPT_UP_P99_MS,
        };
        assert_eq!(peak.paced.iter().map(|s| s.kept_up).collect::<Vec<_>>(), [false, false, true]);
        assert_eq!(peak.reference(), 900.0);
        let plan = Plan { target_per_second: 720.0, intervals: 2, interval: Duration::from_secs(60), connections: 8 };
        let text = report(&peak, &plan, &[interval(1, 720.0, 2.0), interval(2, 720.0, 2.0)], "h");
        assert!(text.contains("20 s steps"), "{text}");
        assert!(text.contains("p99 at most 250 ms"), "{text}");
        assert!(text.contains("): 900 req/s."), "{text}");
        assert!(text.contains("| 950 | 940 | 600.0 | 0 | fell behind |"), "{text}");
        assert!(text.contains("Soak target 720 req/s (80 % of the paced peak)"), "{text}");
        // None kept up with: the closed-loop peak stays the reference.
        let none = Peak { paced: vec![step(1000.0, 10.0, 9000.0)], ..peak };
        assert_eq!(none.reference(), 1000.0);
        assert!(report(&none, &plan, &[], "h").contains("none kept up with"));
    }

    /// A tighter latency budget (`--soak-peak-p99-ms`) turns a step with a building tail into
    /// one fallen behind, and is named in the report.
    #[test]
    fn a_latency_budget_decides_which_step_is_kept_up_with() {
        let at = |p99_ms: f64| Interval { per_second: 1000.0, p99_ms, ..Default::default() };
        assert!(kept_up(1000.0, &at(100.0), KEPT_UP_P99_MS));
        assert!(!kept_up(1000.0, &at(100.0), 50.0));
        assert!(kept_up(1000.0, &at(50.0), 50.0));
        let peak = Peak {
            per_second: 1000.0,
            seconds: 60.0,
            paced: vec![Step { rate: 1000.0, completed_per_second: 1000.0, p99_ms: 40.0, errors: 0, kept_up: true }],
            step_seconds: 60.0,
            p99_budget_ms: 50.0,
        };
        let plan = Plan { target_per_second: 800.0, intervals: 1, interval: Duration::from_secs(60), connections: 8 };
        assert!(report(&peak, &plan, &[], "h").contains("p99 at most 50 ms"));
    }

    /// A single spike does not move the trend; a steady climb does, by its size.
    #[test]
    fn the_trend_ignores_a_spike_and_measures_a_climb() {
        let mut flat = vec![20.0; 29];
        flat[3] = 45.0;
        assert!(trend(&flat).abs() < 1e-9, "{}", trend(&flat));
        let climb: Vec<f64> = (0..29).map(|i| 58.0 + 0.25 * f64::from(i)).collect();
        // 7 MB over the run against a median of 61.5 MB.
        assert!((trend(&climb) - 7.0 / 61.5 * 100.0).abs() < 1e-6, "{}", trend(&climb));
        assert_eq!(trend(&[]), 0.0);
    }

    #[test]
    fn stalled_seconds_are_counted_in_runs() {
        let seconds: Vec<Second> = [100, 10, 10, 100, 10]
            .iter()
            .map(|&n| Second { completed: AtomicU64::new(n), ..Default::default() })
            .collect();
        assert_eq!(stalls(&seconds, 100.0), (3, 2));
    }
}

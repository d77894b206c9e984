//! What the server process spent, read from Linux's /proc between two samples: CPU time of the
//! process and of each of its threads (grouped by thread name), context switches, read/write
//! system calls and resident memory; with PostgreSQL, the CPU time of the database's own
//! processes as well, so that a request's whole cost can be reported.
//!
//! Owns: reading /proc of another process (and, labelled as such, of the driver and the
//! machine). Must never: measure the driver's own process as if it were the server's.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// Clock ticks per second of /proc's CPU times (`USER_HZ`, 100 on every Linux architecture
/// this runs on).
const TICKS_PER_SECOND: f64 = 100.0;

/// One reading of the server process.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// utime + stime of the whole process (threads that ended included), in ticks.
    process_ticks: u64,
    /// Per live thread: (name, ticks, context switches).
    threads: BTreeMap<u32, (String, u64, u64)>,
    /// syscr + syscw of /proc/PID/io: read-like and write-like system calls.
    io_calls: u64,
}

impl Sample {
    /// Live threads at the reading.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }
}

/// The server's use over a scenario, per request.
#[derive(Clone, Debug, Default)]
pub struct ServerUse {
    pub cpu_us: f64,
    /// CPU µs per request by thread group (name), largest first.
    pub by_thread: Vec<(String, f64)>,
    pub context_switches: f64,
    pub io_calls: f64,
    /// CPU µs per request of the PostgreSQL processes (when the vault runs on PostgreSQL).
    pub database_cpu_us: Option<f64>,
}

/// CPU ticks of every process on this machine named `postgres` (the cluster's postmaster,
/// backends and background workers keep that `comm` whatever their title says). Backends that
/// end between two samples take their time with them; the vault's pool keeps its connections.
pub fn database_ticks() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    dir.flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| thread_name(stat).as_deref() == Some("postgres"))
        .filter_map(|stat| cpu_ticks(&stat))
        .sum()
}

/// CPU µs per request of the database between two [`database_ticks`] readings.
pub fn database_per_request(before: u64, after: u64, requests: usize) -> f64 {
    after.saturating_sub(before) as f64 / TICKS_PER_SECOND * 1e6 / requests.max(1) as f64
}

/// Reads the process `pid`; `None` when it is gone or /proc is not readable.
pub fn sample(pid: u32) -> Option<Sample> {
    let root = PathBuf::from(format!("/proc/{pid}"));
    let process_ticks = cpu_ticks(&std::fs::read_to_string(root.join("stat")).ok()?)?;
    let mut threads = BTreeMap::new();
    for entry in std::fs::read_dir(root.join("task")).ok()?.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else { continue };
        let (Ok(stat), Ok(status)) =
            (std::fs::read_to_string(entry.path().join("stat")), std::fs::read_to_string(entry.path().join("status")))
        else {
            continue; // ended between listing and reading
        };
        let (Some(name), Some(ticks)) = (thread_name(&stat), cpu_ticks(&stat)) else { continue };
        let switches = ["voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"]
            .iter()
            .filter_map(|k| status_value(&status, k))
            .sum();
        threads.insert(tid, (group(&name), ticks, switches));
    }
    let io = std::fs::read_to_string(root.join("io")).unwrap_or_default();
    let io_calls = ["syscr:", "syscw:"].iter().filter_map(|k| status_value(&io, k)).sum();
    Some(Sample { process_ticks, threads, io_calls })
}

/// The whole machine's CPU time so far from /proc/stat: (idle, total) in ticks, iowait counted
/// as idle. Between two readings it says whether the machine had any CPU left: with the load
/// driver on the same machine, a server that falls behind while the machine is idle is waiting
/// on something; one that falls behind with no idle time left is short of CPU.
pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> =
        stat.lines().next()?.strip_prefix("cpu ")?.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already inside user).
    let total = fields.iter().take(8).sum();
    Some((fields.get(3)? + fields.get(4)?, total))
}

/// Per cent of the machine's CPU time left idle between two [`machine_ticks`] readings.
pub fn idle_per_cent(before: (u64, u64), after: (u64, u64)) -> f64 {
    let total = after.1.saturating_sub(before.1).max(1) as f64;
    after.0.saturating_sub(before.0) as f64 / total * 100.0
}

/// The server's resident memory now (VmRSS), in MB.
pub fn resident_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(status_value(&status, "VmRSS:")? as f64 / 1024.0)
}

/// The thread that used the most CPU between two samples, and its share of one core (per
/// cent) over `elapsed`: a thread near 100 % is a serial bottleneck however idle the machine is.
pub fn busiest_thread(before: &Sample, after: &Sample, elapsed: std::time::Duration) -> Option<(String, f64)> {
    let core_ticks = elapsed.as_secs_f64() * TICKS_PER_SECOND;
    thread_use(before, after)
        .max_by_key(|(_, used, _)| *used)
        .map(|(name, used, _)| (name.to_owned(), used as f64 / core_ticks.max(1e-9) * 100.0))
}

/// Each thread live at `after`: its group name, and the CPU ticks and context switches it used
/// since `before` (all of them if it started since).
fn thread_use<'a>(before: &'a Sample, after: &'a Sample) -> impl Iterator<Item = (&'a str, u64, u64)> + 'a {
    after.threads.iter().map(|(tid, (name, ticks, switches))| {
        let (t0, s0) = before.threads.get(tid).map_or((0, 0), |(_, t, s)| (*t, *s));
        (name.as_str(), ticks.saturating_sub(t0), switches.saturating_sub(s0))
    })
}

/// What happened between `before` and `after`, per request.
pub fn per_request(before: &Sample, after: &Sample, requests: usize) -> ServerUse {
    let n = requests.max(1) as f64;
    let us = |ticks: u64| ticks as f64 / TICKS_PER_SECOND * 1e6 / n;
    let mut groups: BTreeMap<String, u64> = BTreeMap::new();
    let mut switches = 0;
    for (name, ticks, sw) in thread_use(before, after) {
        *groups.entry(name.to_owned()).or_default() += ticks;
        switches += sw;
    }
    let total = after.process_ticks.saturating_sub(before.process_ticks);
    let seen: u64 = groups.values().sum();
    if total > seen {
        *groups.entry("(threads that ended)".into()).or_default() += total - seen;
    }
    let mut by_thread: Vec<(String, f64)> =
        groups.into_iter().filter(|(_, t)| *t > 0).map(|(name, t)| (name, us(t))).collect();
    by_thread.sort_by(|a, b| b.1.total_cmp(&a.1));
    ServerUse {
        cpu_us: us(total),
        by_thread,
        context_switches: switches as f64 / n,
        io_calls: after.io_calls.saturating_sub(before.io_calls) as f64 / n,
        database_cpu_us: None,
    }
}

/// Threads of one kind share a group: the runtime's workers and blocking threads carry one
/// name, numbered threads (if any) lose their number.
fn group(name: &str) -> String {
    name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-').to_owned()
}

/// `comm` of a stat line: between the first '(' and the last ')'.
fn thread_name(stat: &str) -> Option<String> {
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    Some(stat.get(open + 1..close)?.to_owned())
}

/// utime + stime (fields 14 and 15) of a stat line, after the name (which may hold spaces).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn status_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        let before = sample(pid).unwrap();
        // Burns CPU until a clock tick (10 ms) has surely passed; black_box keeps an optimised
        // build from folding the loop away.
        let (mut x, start) = (0u64, std::time::Instant::now());
        while start.elapsed() < std::time::Duration::from_millis(50) {
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        assert_ne!(x, 1);
        let after = sample(pid).unwrap();
        let used = per_request(&before, &after, 1);
        assert!(used.cpu_us > 0.0, "{used:?}");
        assert!(!used.by_thread.is_empty());
        assert!(resident_mb(pid).unwrap() > 1.0);
        let (_, share) = busiest_thread(&before, &after, std::time::Duration::from_secs(1)).unwrap();
        assert!(share > 0.0, "the spinning thread used no CPU");
    }

    #[test]
    fn names_with_spaces_and_parentheses() {
        let stat = "42 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15";
        assert_eq!(thread_name(stat).as_deref(), Some("a (b) c"));
        assert_eq!(cpu_ticks(stat), Some(11 + 12));
        assert_eq!(group("tokio-runtime-w"), "tokio-runtime-w");
        assert_eq!(group("reader-12"), "reader");
    }

    #[test]
    fn machine_idle_time() {
        let (idle, total) = machine_ticks().unwrap();
        assert!(total > 0 && idle <= total, "{idle} {total}");
        assert_eq!(idle_per_cent((10, 100), (35, 200)), 25.0);
        assert_eq!(idle_per_cent((10, 100), (10, 100)), 0.0);
    }
}

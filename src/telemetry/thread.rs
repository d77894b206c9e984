//! The calling thread's scheduler clock: how long it has been on a CPU and how long it has been
//! runnable but waiting for one (Linux `/proc/thread-self/schedstat`). Between two readings,
//! wall time less both is time the thread was blocked (on the disk, a lock, a sleep).
//!
//! Owns: reading that file, once opened per thread and re-read in place (≈ 1 µs). Must never:
//! be read on a path that runs when metrics are off.

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Duration;

thread_local! {
    /// This thread's schedstat file: `None` until first used, `Some(None)` if it cannot be opened.
    static SCHEDSTAT: RefCell<Option<Option<File>>> = const { RefCell::new(None) };
}

/// A reading of the calling thread's scheduler clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadClock {
    /// Time on a CPU since the thread started.
    pub running: Duration,
    /// Time runnable, waiting for a CPU, since the thread started.
    pub runnable: Duration,
}

impl ThreadClock {
    /// The calling thread's clock now; `None` where the kernel does not offer it.
    pub fn now() -> Option<ThreadClock> {
        SCHEDSTAT.with(|slot| {
            let mut slot = slot.borrow_mut();
            let file = slot.get_or_insert_with(|| File::open("/proc/thread-self/schedstat").ok()).as_ref()?;
            let mut buf = [0u8; 96];
            let n = file.read_at(&mut buf, 0).ok()?;
            parse(buf.get(..n)?)
        })
    }

    /// Time spent running and waiting for a CPU from `earlier` to `self`.
    pub fn since(&self, earlier: &ThreadClock) -> ThreadClock {
        ThreadClock {
            running: self.running.saturating_sub(earlier.running),
            runnable: self.runnable.saturating_sub(earlier.runnable),
        }
    }
}

/// `cpu_ns run_delay_ns timeslices\n`.
fn parse(text: &[u8]) -> Option<ThreadClock> {
    let text = std::str::from_utf8(text).ok()?;
    let mut fields = text.split_ascii_whitespace().map(str::parse::<u64>);
    let running = fields.next()?.ok()?;
    let runnable = fields.next()?.ok()?;
    Some(ThreadClock { running: Duration::from_nanos(running), runnable: Duration::from_nanos(runnable) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernels_line() {
        assert_eq!(
            parse(b"273159821 151789518 168\n"),
            Some(ThreadClock {
                running: Duration::from_nanos(273_159_821),
                runnable: Duration::from_nanos(151_789_518)
            })
        );
        assert_eq!(parse(b"12\n"), None);
        assert_eq!(parse(b"x 1 2\n"), None);
    }

    /// Spinning moves the running clock by about the time spun; sleeping does not (fails if the
    /// file were read once and cached, or the fields swapped).
    #[test]
    fn the_clock_counts_running_not_sleeping() {
        let Some(start) = ThreadClock::now() else {
            eprintln!("SKIPPED: no /proc/thread-self/schedstat on this kernel");
            return;
        };
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let spun = ThreadClock::now().map(|c| c.since(&start));
        std::thread::sleep(Duration::from_millis(60));
        let slept = ThreadClock::now().map(|c| c.since(&start));
        let (spun, slept) = (spun.unwrap(), slept.unwrap());
        // Some of the spin may have waited for a CPU on a busy machine, but not most of it.
        assert!(spun.running + spun.runnable >= Duration::from_millis(55), "{spun:?}");
        assert!(spun.running >= Duration::from_millis(20), "{spun:?}");
        assert!(slept.running - spun.running < Duration::from_millis(20), "{spun:?} then {slept:?}");
    }
}

//! The standard `process_*` metrics every Prometheus exporter serves, read from `/proc/self`
//! (Linux) without a metrics library: resident and virtual memory, CPU seconds, open file
//! descriptors and their limit, and the start time. Elsewhere there are none.

use std::fmt::Write;

/// The process metrics in Prometheus text format, or nothing where `/proc` is missing.
pub fn render() -> String {
    let mut out = String::new();
    let Some(stat) = std::fs::read_to_string("/proc/self/stat").ok() else {
        return out;
    };
    let Some(stat) = Stat::parse(&stat) else {
        return out;
    };
    let ticks = clock_ticks();
    let page = page_size();
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| boot_time(&s));
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        format!("{}", (stat.utime + stat.stime) as f64 / ticks),
    );
    metric(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        (stat.rss_pages * page).to_string(),
    );
    metric(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        stat.vsize.to_string(),
    );
    if let Some(boot) = boot {
        metric(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            format!("{}", boot as f64 + stat.starttime as f64 / ticks),
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metric(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            // The directory listing holds one descriptor of its own.
            fds.count().saturating_sub(1).to_string(),
        );
    }
    if let Some(max) = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| max_open_files(&l))
    {
        metric(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max.to_string(),
        );
    }
    out
}

/// The fields of `/proc/self/stat` these metrics use.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    utime: u64,
    stime: u64,
    starttime: u64,
    vsize: u64,
    rss_pages: u64,
}

impl Stat {
    /// Parses `/proc/<pid>/stat`. The command name (field 2) may hold spaces and parentheses,
    /// so fields are counted from the last `)`.
    fn parse(stat: &str) -> Option<Stat> {
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // `fields[0]` is field 3 (state); field n is `fields[n - 3]`.
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(Stat {
            utime: field(14)?,
            stime: field(15)?,
            starttime: field(22)?,
            vsize: field(23)?,
            rss_pages: field(24)?,
        })
    }
}

/// `btime` of `/proc/stat`: when the system booted, in unix seconds.
fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

/// The soft limit of `Max open files` in `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let stat = "4242 (zooid (sync) x) S 1 4242 4242 0 -1 4194560 700 0 0 0 150 30 0 0 20 0 \
                    14 0 987654 123456789 2048 18446744073709551615";
        assert_eq!(
            Stat::parse(stat),
            Some(Stat {
                utime: 150,
                stime: 30,
                starttime: 987654,
                vsize: 123456789,
                rss_pages: 2048,
            })
        );
        assert_eq!(Stat::parse("garbage"), None);
        assert_eq!(Stat::parse("1 (x) S 1 2"), None, "too short");
    }

    #[test]
    fn limits_and_boot_time_are_read_by_name() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max cpu time              unlimited            unlimited            seconds\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
        assert_eq!(max_open_files("Max cpu time unlimited"), None);
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1764633600\nprocesses 9\n"),
            Some(1764633600)
        );
        assert_eq!(boot_time("cpu 1\n"), None);
    }

    #[test]
    fn this_process_is_described() {
        let text = render();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_start_time_seconds",
            "process_open_fds",
            "process_max_fds",
        ] {
            let value: f64 = text
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("{name} missing:\n{text}"));
            assert!(value >= 0.0, "{name}");
        }
        let rss: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("process_resident_memory_bytes ")?
                    .parse()
                    .ok()
            })
            .unwrap();
        assert!(
            rss > 1e6,
            "a test process holds more than a megabyte: {rss}"
        );
    }
}

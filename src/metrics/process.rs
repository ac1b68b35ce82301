//! Machine CPU and memory from `/proc`, as Triton reports them (`nv_cpu_*`).

/// (busy, total) CPU time in clock ticks since boot, from the `cpu` line of `/proc/stat`; busy is
/// total minus idle and iowait.
pub fn cpu_ticks() -> Option<(u64, u64)> {
    parse_cpu(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_cpu(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().unwrap_or(0)).collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice]
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// CPU utilization between two samples, 0.0 to 1.0.
pub fn utilization(before: Option<(u64, u64)>, now: (u64, u64)) -> f64 {
    let (busy0, total0) = before.unwrap_or((0, 0));
    let (busy, total) = (now.0.saturating_sub(busy0), now.1.saturating_sub(total0));
    if total == 0 {
        0.0
    } else {
        (busy as f64 / total as f64).clamp(0.0, 1.0)
    }
}

/// (total, used) memory in bytes from `/proc/meminfo`; used = MemTotal - MemAvailable.
pub fn memory() -> Option<(u64, u64)> {
    parse_meminfo(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let kib = |key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].split_whitespace().next()?.parse::<u64>().ok().map(|v| v * 1024)
    };
    let total = kib("MemTotal:")?;
    let available = kib("MemAvailable:")?;
    Some((total, total.saturating_sub(available)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        assert_eq!(parse_cpu(stat), Some((150, 1000)));
        assert_eq!(utilization(Some((100, 800)), (150, 1000)), 0.25);
        assert_eq!(utilization(None, (0, 0)), 0.0);
        let meminfo = "MemTotal:       16000 kB\nMemFree:   1000 kB\nMemAvailable:   4000 kB\n";
        assert_eq!(parse_meminfo(meminfo), Some((16000 * 1024, 12000 * 1024)));
        assert!(cpu_ticks().is_some() && memory().is_some(), "this machine has /proc");
    }
}

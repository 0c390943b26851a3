//! Resident memory of the processes under test, from `/proc/<pid>/status`.

/// `VmRSS` of `pid` in MB (10^6 bytes); NaN when unreadable.
pub fn rss_mb(pid: u32) -> f64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return f64::NAN;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb * 1024.0 / 1e6)
}

/// One process's memory through S5.
#[derive(Clone, Debug)]
pub struct Rss {
    pub process: String,
    /// Just after start-up (every process ready, nothing measured yet).
    pub idle_mb: f64,
    /// Just before S5's streams.
    pub before_mb: f64,
    /// The highest sample while they ran.
    pub load_mb: f64,
    /// A few seconds after they ended.
    pub after_mb: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_rss() {
        let mb = rss_mb(std::process::id());
        assert!(mb > 0.1 && mb < 10_000.0, "{mb}");
        assert!(rss_mb(u32::MAX).is_nan());
    }
}

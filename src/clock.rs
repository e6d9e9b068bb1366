//! Wall-clock time as Unix seconds: the one conversion behind every `*_unix`
//! field of a report and every timestamp raywatch hands Prometheus.

use std::time::SystemTime;

/// `t` in seconds since the Unix epoch (0 for a time before it).
pub fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Now, in seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    unix(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn seconds_since_the_epoch_and_zero_before_it() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_500);
        assert_eq!(unix(t), 1.5);
        assert_eq!(unix(SystemTime::UNIX_EPOCH - Duration::from_secs(1)), 0.0);
        assert!(unix_now() > 1.7e9);
    }
}

//! Reading a speaker's Prometheus metrics from inside its node namespace (the default
//! `--health-addr 0.0.0.0:7473`), e.g. to wait until the membership has formed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::netns::{Netns, NetnsError};

/// The speaker's default metrics port.
pub const SPEAKER_METRICS_PORT: u16 = 7473;

/// The value of the sample `name` (no labels) in a Prometheus text exposition.
pub fn gauge_in(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `GET /metrics` on `127.0.0.1:port` inside `ns`; `Ok(None)` while nothing listens there.
pub fn scrape(ns: &Netns, port: u16) -> Result<Option<String>, NetnsError> {
    let got = ns.run_in(move || -> std::io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        // A stuck endpoint must not hang the caller.
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })?;
    Ok(got.ok())
}

/// The gauge `name` of the speaker in `ns` (on [`SPEAKER_METRICS_PORT`]), if it is serving.
pub fn speaker_gauge(ns: &Netns, name: &str) -> Result<Option<f64>, NetnsError> {
    Ok(scrape(ns, SPEAKER_METRICS_PORT)?.and_then(|b| gauge_in(&b, name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_are_read_by_exact_name() {
        let body = "# HELP lodestone_speaker_membership_members alive\n\
                    lodestone_speaker_membership_members_total 9\n\
                    lodestone_speaker_membership_members 3\n";
        assert_eq!(
            gauge_in(body, "lodestone_speaker_membership_members"),
            Some(3.0)
        );
        assert_eq!(gauge_in(body, "lodestone_speaker_other"), None);
    }
}

//! Reading a speaker's Prometheus metrics and probes from inside its node namespace (the
//! default `--health-addr 0.0.0.0:7473`), e.g. to wait until the membership has formed or to
//! check that a counter moved with real traffic.
//!
//! [`samples`] parses a text exposition (labels included); [`value_in`] picks one series;
//! [`poll`] turns "until this holds" into a result with the last scrape for the failure message.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::netns::{Netns, NetnsError};

/// The speaker's default metrics port.
pub const SPEAKER_METRICS_PORT: u16 = 7473;

/// One sample line of a text exposition.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name as exposed (counters with their `_total`).
    pub name: String,
    /// Label pairs.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

/// Every sample of a Prometheus / OpenMetrics text exposition; comments and lines that do not
/// parse are skipped.
pub fn samples(body: &str) -> Vec<Sample> {
    body.lines().filter_map(parse_sample).collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find(['{', ' ']) {
        Some(i) if line[i..].starts_with('{') => {
            let close = line[i..].find('}')? + i;
            (
                &line[..i],
                parse_labels(&line[i + 1..close])?,
                &line[close + 1..],
            )
        }
        Some(i) => (&line[..i], BTreeMap::new(), &line[i..]),
        None => return None,
    };
    // A timestamp may follow the value.
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `k="v",k2="v2"` (values without escaped quotes, as ours are).
fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let (value, after) = after.split_once('"')?;
        out.insert(key.trim().to_owned(), value.to_owned());
        rest = after.trim_start_matches(',').trim();
    }
    Some(out)
}

/// The value of the series `name` with exactly the labels `labels` in `body`.
pub fn value_in(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    samples(body)
        .into_iter()
        .find(|s| s.name == name && s.labels == want)
        .map(|s| s.value)
}

/// The value of the sample `name` (no labels) in a Prometheus text exposition.
pub fn gauge_in(body: &str, name: &str) -> Option<f64> {
    value_in(body, name, &[])
}

/// `GET path` on `127.0.0.1:port` inside `ns`: `(status code, body)`, or `Ok(None)` while
/// nothing listens there (or the answer is not HTTP).
pub fn http_get(ns: &Netns, port: u16, path: &str) -> Result<Option<(u16, String)>, NetnsError> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let got = ns.run_in(move || -> std::io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        // A stuck endpoint must not hang the caller.
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(request.as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })?;
    Ok(got.ok().and_then(|raw| {
        let code = raw.split_whitespace().nth(1)?.parse().ok()?;
        let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        Some((code, body.to_owned()))
    }))
}

/// The body of `GET /metrics` on `127.0.0.1:port` inside `ns`; `Ok(None)` while nothing
/// listens there.
pub fn scrape(ns: &Netns, port: u16) -> Result<Option<String>, NetnsError> {
    Ok(http_get(ns, port, "/metrics")?.map(|(_, body)| body))
}

/// The gauge `name` of the speaker in `ns` (on [`SPEAKER_METRICS_PORT`]), if it is serving.
pub fn speaker_gauge(ns: &Netns, name: &str) -> Result<Option<f64>, NetnsError> {
    Ok(scrape(ns, SPEAKER_METRICS_PORT)?.and_then(|b| gauge_in(&b, name)))
}

/// Calls `probe` every 100 ms until it returns `Ok(value)`, for at most `timeout`. `probe`
/// returns `Err(state)` with what it saw (e.g. the last scrapes) while the condition does not
/// hold; on timeout the error names `what` and carries that last state. The deadline only
/// turns a hang into a failure: nothing here measures how fast the condition came true.
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(v) => return Ok(v),
            Err(state) if Instant::now() > deadline => {
                return Err(format!(
                    "{what}: not reached within {timeout:?}; last seen:\n{state}"
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The metric names a Prometheus/OpenMetrics exposition declares (`# TYPE` lines), counters
/// with the `_total` their samples carry: what a docs page must list.
pub fn exposed_names(exposition: &str) -> std::collections::BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (name, kind) = l.split_once(' ')?;
            // OpenMetrics names the counter family without the `_total` of its sample.
            Some(if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_owned()
            })
        })
        .collect()
}

/// The metric names a Markdown table lists: rows starting `` | `PREFIXname`` (labels in
/// `{…}` after the name are ignored).
pub fn documented_names(markdown: &str, prefix: &str) -> std::collections::BTreeSet<String> {
    let row = format!("| `{prefix}");
    markdown
        .lines()
        .filter_map(|l| l.strip_prefix(row.as_str()))
        .filter_map(|l| l.split(['`', '{']).next())
        .map(|n| format!("{prefix}{n}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "# HELP lodestone_speaker_membership_members alive\n\
        # TYPE lodestone_speaker_membership_members gauge\n\
        lodestone_speaker_membership_members_total 9\n\
        lodestone_speaker_membership_members 3\n\
        lodestone_speaker_requests_seen_total{protocol=\"arp\"} 7\n\
        lodestone_speaker_requests_seen_total{protocol=\"ndp\"} 5 1700000000\n\
        lodestone_controller_pool_addresses_in_use{pool=\"blue\",family=\"IPv4\"} 2\n\
        # EOF\n";

    #[test]
    fn gauges_are_read_by_exact_name() {
        assert_eq!(
            gauge_in(BODY, "lodestone_speaker_membership_members"),
            Some(3.0)
        );
        assert_eq!(gauge_in(BODY, "lodestone_speaker_other"), None);
    }

    #[test]
    fn labelled_series_are_read_by_exact_label_set() {
        let name = "lodestone_speaker_requests_seen_total";
        assert_eq!(value_in(BODY, name, &[("protocol", "arp")]), Some(7.0));
        assert_eq!(value_in(BODY, name, &[("protocol", "ndp")]), Some(5.0));
        assert_eq!(value_in(BODY, name, &[]), None);
        assert_eq!(
            value_in(
                BODY,
                "lodestone_controller_pool_addresses_in_use",
                &[("family", "IPv4"), ("pool", "blue")]
            ),
            Some(2.0)
        );
        assert_eq!(samples(BODY).len(), 5);
    }

    #[tokio::test]
    async fn poll_returns_the_value_or_the_last_state() {
        let mut n = 0;
        let got = poll("third call", Duration::from_secs(10), || {
            n += 1;
            let v = n;
            async move { if v >= 3 { Ok(v) } else { Err(format!("n={v}")) } }
        })
        .await;
        assert_eq!(got, Ok(3));
        let err = poll("never", Duration::ZERO, || async {
            Err::<(), _>("stuck".to_owned())
        })
        .await
        .unwrap_err();
        assert!(err.contains("never") && err.contains("stuck"), "{err}");
    }
}

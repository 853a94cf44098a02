//! Reading a server's Prometheus metrics: one scrape of `/metrics` over
//! plain HTTP, parsed from the text exposition format into samples that
//! tests (and the benchmark) add up by name and labels.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// One sample: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of one scrape.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
}

/// Scrapes `http://<addr>/metrics` (bounded by 10 s).
pub async fn scrape(addr: SocketAddr) -> anyhow::Result<Exposition> {
    let text = tokio::time::timeout(Duration::from_secs(10), get_metrics(addr))
        .await
        .with_context(|| format!("scraping {addr}: no answer within 10 s"))??;
    Exposition::parse(&text)
}

/// The body of `GET /metrics`, over HTTP/1.1 on a connection of its own.
async fn get_metrics(addr: SocketAddr) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the metrics endpoint {addr}"))?;
    stream
        .write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8(response).context("metrics are not UTF-8")?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("an HTTP response without a header end")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200"),
        "GET /metrics on {addr}: {}",
        head.lines().next().unwrap_or_default()
    );
    anyhow::ensure!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "GET /metrics on {addr}: a chunked body (expected its length)"
    );
    Ok(body.to_owned())
}

impl Exposition {
    /// Parses Prometheus' text format (comments and blank lines skipped).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| parse_sample(line).with_context(|| format!("metrics line `{line}`")))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { samples })
    }

    /// The samples named `name` whose labels include every one of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|have| have == v))
        })
    }

    /// The sum of [`Self::matching`] samples (0 when there are none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// Every sample name, as exported (a histogram's `_bucket`, `_sum` and
    /// `_count` each).
    pub fn names(&self) -> BTreeSet<&str> {
        self.samples.iter().map(|s| s.name.as_str()).collect()
    }
}

/// `name{a="x",b="y"} value [timestamp]`.
fn parse_sample(line: &str) -> anyhow::Result<Sample> {
    let name_end = line
        .find(['{', ' ', '\t'])
        .context("a sample without a value")?;
    let name = &line[..name_end];
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    let value = rest
        .split_whitespace()
        .next()
        .context("a sample without a value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().with_context(|| format!("value `{other}`"))?,
    };
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// The labels after a `{`, up to the closing `}`; the rest of the line.
fn parse_labels(mut text: &str) -> anyhow::Result<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        text = text.trim_start_matches([',', ' ']);
        if let Some(rest) = text.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let (key, after) = text.split_once("=\"").context("a label without =\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => anyhow::bail!("a label value cut after a backslash"),
                },
                Some((_, c)) => value.push(c),
                None => anyhow::bail!("an unterminated label value"),
            }
        };
        labels.insert(key.trim().to_owned(), value);
        text = &after[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_with_their_labels() {
        let text = "# HELP x_total Things.\n# TYPE x_total counter\n\
                    x_total{a=\"1\",b=\"q\\\"uo\\\\te\"} 3\n\
                    x_total{a=\"2\"} 4.5\n\
                    y_seconds_bucket{le=\"+Inf\"} 7\n\
                    up 1 1700000000000\n";
        let parsed = Exposition::parse(text).expect("valid exposition");
        assert_eq!(parsed.samples.len(), 4);
        assert_eq!(parsed.samples[0].labels["b"], "q\"uo\\te");
        assert_eq!(parsed.sum("x_total", &[]), 7.5);
        assert_eq!(parsed.sum("x_total", &[("a", "2")]), 4.5);
        assert_eq!(parsed.sum("x_total", &[("a", "3")]), 0.0);
        assert_eq!(parsed.sum("y_seconds_bucket", &[("le", "+Inf")]), 7.0);
        assert_eq!(parsed.sum("up", &[]), 1.0);
        assert!(parsed.names().contains("y_seconds_bucket"));
        assert!(Exposition::parse("x{a=\"1} 2").is_err());
    }
}

//! `commerce-traces show`: asks a running viewer's JSON API for a trace (by
//! its id, or by a saga's id) and draws it with [`crate::render::text`],
//! polling a bounded while for it to arrive and stop growing.

use std::time::Duration;

use tokio::time::Instant;

use crate::http::{TraceDocument, TraceList};
use crate::model::{Trace, parse_trace_id};
use crate::render;

/// How often the viewer is asked again.
const POLL: Duration = Duration::from_millis(250);

/// What to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Trace(String),
    Saga(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Trace(id) => write!(f, "trace {id}"),
            Self::Saga(id) => write!(f, "saga {id}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ShowError {
    #[error("{0:?} is not a trace id (32 hex digits)")]
    BadTraceId(String),
    #[error("{target} not found at {from} after waiting {waited:?}")]
    NotFound {
        target: Target,
        from: String,
        waited: Duration,
    },
    #[error("no trace viewer answered at {from} within {waited:?}: {error}")]
    Unreachable {
        from: String,
        waited: Duration,
        error: reqwest::Error,
    },
}

/// A viewer's JSON API.
#[derive(Debug, Clone)]
pub struct Client {
    /// Its base URL, without a trailing slash.
    from: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(from: &str) -> Self {
        Self {
            from: from.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// The traces of `target` now: none if the viewer has none.
    pub async fn fetch(&self, target: &Target) -> Result<Vec<Trace>, reqwest::Error> {
        match target {
            Target::Trace(id) => {
                let url = format!("{}/api/traces/{id}", self.from);
                let response = self.http.get(url).send().await?;
                if response.status() == reqwest::StatusCode::NOT_FOUND {
                    return Ok(Vec::new());
                }
                let document: TraceDocument = response.error_for_status()?.json().await?;
                Ok(vec![document.into()])
            }
            Target::Saga(id) => {
                let url = format!("{}/api/traces", self.from);
                let list: TraceList = self
                    .http
                    .get(url)
                    .query(&[("saga_id", id.as_str())])
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                Ok(list.traces.into_iter().map(Trace::from).collect())
            }
        }
    }

    /// The traces of `target` once found and unchanged for `settle` (the
    /// servers' exporters send in batches: at least their batch delay), or
    /// as they are when `wait` is over; an error if none came within `wait`.
    pub async fn wait_for(
        &self,
        target: &Target,
        wait: Duration,
        settle: Duration,
    ) -> Result<Vec<Trace>, ShowError> {
        let deadline = Instant::now() + wait;
        // The span count last seen, and since when.
        let mut seen: Option<(usize, Instant)> = None;
        let mut found = Vec::new();
        loop {
            match self.fetch(target).await {
                Ok(traces) if !traces.is_empty() => {
                    let spans = traces.iter().map(|t| t.spans.len()).sum();
                    match seen {
                        Some((count, since)) if count == spans => {
                            if since.elapsed() >= settle {
                                return Ok(traces);
                            }
                        }
                        _ => seen = Some((spans, Instant::now())),
                    }
                    found = traces;
                }
                Ok(_) => {}
                Err(error) if Instant::now() >= deadline && found.is_empty() => {
                    return Err(ShowError::Unreachable {
                        from: self.from.clone(),
                        waited: wait,
                        error,
                    });
                }
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                return if found.is_empty() {
                    Err(ShowError::NotFound {
                        target: target.clone(),
                        from: self.from.clone(),
                        waited: wait,
                    })
                } else {
                    Ok(found)
                };
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// The target of `show`'s arguments (a trace id is checked here).
pub fn target(trace_id: Option<&str>, saga_id: Option<&str>) -> Result<Target, ShowError> {
    match (trace_id, saga_id) {
        (Some(id), _) => parse_trace_id(id)
            .map(Target::Trace)
            .ok_or_else(|| ShowError::BadTraceId(id.to_owned())),
        (None, Some(saga)) => Ok(Target::Saga(saga.to_owned())),
        (None, None) => Err(ShowError::BadTraceId(String::new())),
    }
}

/// The traces drawn one after the other, a blank line between.
pub fn text(traces: &[Trace]) -> String {
    traces
        .iter()
        .map(render::text)
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_id_is_checked_and_lowercased_a_saga_id_taken_as_is() {
        let id = "4BF92F3577B34DA6A3CE929D0E0E4736";
        assert_eq!(
            target(Some(id), None).ok(),
            Some(Target::Trace(id.to_ascii_lowercase()))
        );
        assert!(matches!(
            target(Some("4bf92f35"), None),
            Err(ShowError::BadTraceId(_))
        ));
        assert_eq!(
            target(None, Some("01a2-saga")).ok(),
            Some(Target::Saga("01a2-saga".to_owned()))
        );
    }
}

//! The targets the saga design must meet, judged from the run's numbers.
//! Load targets are read from the main scenario (the first in the levels);
//! recovery from the scenario named "recovery".

use super::markdown::{clients, fmt_ms, fmt_rate, fmt_ratio};
use super::{LevelPair, ScenarioLevels};
use crate::model::{LevelResult, Report, System};

/// The concurrency the latency and relative-throughput targets are set at.
const TARGET_CLIENTS: usize = 32;
const MIN_THROUGHPUT_RATIO: f64 = 0.5;
const MIN_SAGAS_PER_SEC: f64 = 1_000.0;
const MAX_P99_MS: f64 = 25.0;
const MAX_COMMITS_PER_SAGA: f64 = 8.0;
const MAX_RECOVERY_SECS: f64 = 10.0;
/// The scenario and figure that time recovery after an orchestrator crash.
const RECOVERY_SCENARIO: &str = "recovery";
const RECOVERY_FIGURE: &str = "recovery_secs";

pub(super) enum Verdict {
    Met,
    Missed,
    /// The run did not measure what the target needs.
    NotMeasured,
}

impl Verdict {
    fn from_bool(met: bool) -> Self {
        if met { Self::Met } else { Self::Missed }
    }

    pub(super) fn mark(&self) -> &'static str {
        match self {
            Self::Met => "✅",
            Self::Missed => "❌",
            Self::NotMeasured => "➖",
        }
    }
}

pub(super) struct Target {
    pub goal: String,
    pub verdict: Verdict,
    /// The measured value, with where it was measured.
    pub measured: String,
}

impl Target {
    fn not_measured(goal: String, why: &str) -> Self {
        Self {
            goal,
            verdict: Verdict::NotMeasured,
            measured: format!("not measured ({why})"),
        }
    }
}

pub(super) fn evaluate(report: &Report, groups: &[ScenarioLevels<'_>]) -> Vec<Target> {
    let main = groups.first();
    let at_target = main.and_then(|g| g.pairs.iter().find(|p| p.concurrency == TARGET_CLIENTS));
    vec![
        relative_throughput(main, at_target),
        absolute_throughput(main),
        tail_latency(main, at_target),
        commits_per_saga(main),
        recovery(report),
    ]
}

fn relative_throughput(main: Option<&ScenarioLevels<'_>>, pair: Option<&LevelPair<'_>>) -> Target {
    let goal = format!(
        "Saga throughput at {} ≥ {MIN_THROUGHPUT_RATIO} × baseline",
        clients(TARGET_CLIENTS)
    );
    let (Some(main), Some(pair)) = (main, pair) else {
        return Target::not_measured(goal, &format!("no level at {}", clients(TARGET_CLIENTS)));
    };
    let (Some(saga), Some(baseline)) = (pair.saga, pair.baseline) else {
        return Target::not_measured(
            goal,
            &format!("both systems are needed at {}", clients(TARGET_CLIENTS)),
        );
    };
    let ratio = pair.ratio(|l| l.throughput);
    Target {
        goal,
        verdict: match ratio {
            Some(ratio) => Verdict::from_bool(ratio >= MIN_THROUGHPUT_RATIO),
            None => Verdict::NotMeasured,
        },
        measured: format!(
            "{} (saga {} vs baseline {} orders/s, {})",
            fmt_ratio(ratio),
            fmt_rate(saga.throughput),
            fmt_rate(baseline.throughput),
            main.scenario
        ),
    }
}

fn absolute_throughput(main: Option<&ScenarioLevels<'_>>) -> Target {
    let goal = format!(
        "≥ {} sagas/s at the best level",
        fmt_rate(MIN_SAGAS_PER_SEC)
    );
    let Some(main) = main else {
        return Target::not_measured(goal, "no load levels");
    };
    let best = saga_levels(main).max_by(|a, b| a.throughput.total_cmp(&b.throughput));
    let Some(best) = best else {
        return Target::not_measured(goal, "the saga did not run");
    };
    Target {
        goal,
        verdict: Verdict::from_bool(best.throughput >= MIN_SAGAS_PER_SEC),
        measured: format!(
            "{} orders/s at {} ({})",
            fmt_rate(best.throughput),
            clients(best.concurrency),
            main.scenario
        ),
    }
}

fn tail_latency(main: Option<&ScenarioLevels<'_>>, pair: Option<&LevelPair<'_>>) -> Target {
    let goal = format!("Saga p99 at {} < {MAX_P99_MS} ms", clients(TARGET_CLIENTS));
    let (Some(main), Some(saga)) = (main, pair.and_then(|p| p.side(System::Saga))) else {
        return Target::not_measured(
            goal,
            &format!("no saga level at {}", clients(TARGET_CLIENTS)),
        );
    };
    Target {
        goal,
        verdict: Verdict::from_bool(saga.latency.p99 < MAX_P99_MS),
        measured: format!("{} ms ({})", fmt_ms(saga.latency.p99), main.scenario),
    }
}

fn commits_per_saga(main: Option<&ScenarioLevels<'_>>) -> Target {
    let goal = format!("≤ {MAX_COMMITS_PER_SAGA} commits per saga");
    let Some(main) = main else {
        return Target::not_measured(goal, "no load levels");
    };
    // Judged at the worst level: the target holds for every load or not at all.
    let worst =
        saga_levels(main).max_by(|a, b| a.commits_per_order.total_cmp(&b.commits_per_order));
    let Some(worst) = worst else {
        return Target::not_measured(goal, "the saga did not run");
    };
    Target {
        goal,
        verdict: Verdict::from_bool(worst.commits_per_order <= MAX_COMMITS_PER_SAGA),
        measured: format!(
            "{:.2} commits/order at worst ({}, {})",
            worst.commits_per_order,
            clients(worst.concurrency),
            main.scenario
        ),
    }
}

fn recovery(report: &Report) -> Target {
    let goal = format!("Recovery of 10,000 in-flight sagas within {MAX_RECOVERY_SECS} s");
    let scenario = report
        .scenarios
        .iter()
        .find(|s| s.name == RECOVERY_SCENARIO);
    let Some(scenario) = scenario else {
        return Target::not_measured(goal, &format!("no \"{RECOVERY_SCENARIO}\" scenario"));
    };
    let Some(&secs) = scenario.figures.get(RECOVERY_FIGURE) else {
        return Target::not_measured(goal, &format!("no \"{RECOVERY_FIGURE}\" figure"));
    };
    let in_flight = scenario
        .figures
        .get("in_flight_at_kill")
        .map(|n| format!(" ({} sagas in flight)", super::markdown::fmt_figure(*n)))
        .unwrap_or_default();
    Target {
        goal,
        verdict: Verdict::from_bool(secs <= MAX_RECOVERY_SECS),
        measured: format!("{} s{in_flight}", super::markdown::fmt_figure(secs)),
    }
}

fn saga_levels<'a>(group: &'a ScenarioLevels<'a>) -> impl Iterator<Item = &'a LevelResult> {
    group.pairs.iter().filter_map(|p| p.saga)
}

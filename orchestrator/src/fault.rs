//! Test-only fault injection: `ORCHESTRATOR_CRASH_AT=before:deduct_points`
//! (or `after:<step>`) makes the process abort, like `kill -9`, right before
//! or right after that step's participant call. Crash tests use it to stop
//! the orchestrator at every step boundary; never set it in production.

use crate::domain::saga::Step;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Before,
    After,
}

#[derive(Debug, Clone, Default)]
pub struct Faults {
    crash_at: Option<(Phase, String)>,
}

impl Faults {
    pub const VARIABLE: &'static str = "ORCHESTRATOR_CRASH_AT";

    pub fn from_env() -> Self {
        let crash_at = std::env::var(Self::VARIABLE).ok().and_then(|spec| {
            let (phase, step) = spec.split_once(':')?;
            let phase = match phase {
                "before" => Phase::Before,
                "after" => Phase::After,
                _ => return None,
            };
            tracing::warn!(%spec, "fault injection armed: this process will abort");
            Some((phase, step.to_owned()))
        });
        Self { crash_at }
    }

    /// Aborts the process when this is the armed point.
    pub fn check(&self, phase: Phase, step: Step) {
        if let Some((at, name)) = &self.crash_at
            && *at == phase
            && name == step.name()
        {
            tracing::error!(step = step.name(), ?phase, "fault injection: aborting");
            std::process::abort();
        }
    }
}

//! Orders and sagas as pure rules: validation, the order state machine, the
//! saga definitions and the planner that reads the step log. No SQL, no gRPC.

pub mod order;
pub mod reconcile;
pub mod saga;

//! Fitting a run to a wall-clock budget.

use std::time::Duration;

/// `(steps, stage2_at)` for a run at `step` that takes `per_step` seconds a step and has
/// `left` of its time budget: 95 % of what is left (validation and checkpoints take time
/// too), never beyond the run's `requested` plan. Stage 2 keeps its share of the run until it
/// has begun, and is not moved after.
pub fn plan_for_budget(
    step: u64,
    per_step: f64,
    left: Duration,
    (requested_steps, requested_stage2): (u64, u64),
    stage2_at: u64,
) -> (u64, u64) {
    let fits = step + (0.95 * left.as_secs_f64() / per_step.max(1e-9)) as u64;
    let steps = fits.clamp(step + 1, requested_steps.max(step + 1));
    if step >= stage2_at {
        return (steps, stage2_at);
    }
    let share = requested_stage2 as f64 / requested_steps.max(1) as f64;
    (steps, ((share * steps as f64) as u64).min(requested_stage2))
}

//! Weight averaging of models that share a starting point: stochastic weight averaging of
//! snapshots along one run (Izmailov et al. 2018), or a "model soup" of runs fine-tuned from
//! one base (Wortsman et al. 2022).
//!
//! Late in training, SGD-like optimisers circle the floor of a wide basin rather than settle in
//! it; each snapshot sits on the basin's rim, and their mean lies nearer its centre, where the
//! loss is flatter and held-out error lower. Averaging is meaningless for unrelated networks
//! (their channels are in no common order), so members must come from one lineage; the
//! architecture check below is the part of that a file can prove.

use std::path::PathBuf;

use tch::Device;

use crate::error::{Error, Result};
use crate::model::Model;

/// The element-wise mean of every variable of `models`, batch-norm running statistics
/// included (each member's statistics describe its own weights, and the members are close
/// enough that the mean nearly describes the mean weights; re-estimating them afterwards,
/// `partialconv recalibrate-bn` / [`crate::train::recalibrate_bn`], gained 0.01 dB on the
/// bundled model, `models/MODEL_CARD.md`). The header is the first member's, with
/// `training` recording the members'.
pub fn average(models: &[Model]) -> Result<Model> {
    average_named(models, |i| format!("model {}", i + 1))
}

/// [`average`] of model files, each named by its path in the errors.
pub fn average_files(paths: &[PathBuf], device: Device) -> Result<Model> {
    let models = paths
        .iter()
        .map(|p| Model::load(p, device))
        .collect::<Result<Vec<_>>>()?;
    average_named(&models, |i| paths[i].display().to_string())
}

fn average_named(models: &[Model], name: impl Fn(usize) -> String) -> Result<Model> {
    let first = models
        .first()
        .ok_or_else(|| Error::InvalidArgument("nothing to average".into()))?;
    for (i, m) in models.iter().enumerate().skip(1) {
        if m.meta.config != first.meta.config || m.meta.normalization != first.meta.normalization {
            return Err(Error::InvalidArgument(format!(
                "{} has another architecture or normalisation than {} ({:?} vs {:?}); \
                 only models fine-tuned from one base can be averaged",
                name(i),
                name(0),
                m.meta.config,
                first.meta.config
            )));
        }
    }
    let mut meta = first.meta.clone();
    meta.training = serde_json::json!({
        "average_of": models.iter().map(|m| m.meta.training.clone()).collect::<Vec<_>>(),
    });
    let out = Model::new(meta, first.vs.device())?;
    let members: Vec<_> = models.iter().map(|m| m.vs.variables()).collect();
    let n = models.len() as f64;
    tch::no_grad(|| -> Result<()> {
        for (var, mut target) in out.vs.variables() {
            // Same config, so the same variables: a missing one would be a bug here.
            let sum = members
                .iter()
                .map(|vars| vars[&var].to_device(target.device()))
                .reduce(|a, b| a + b)
                .expect("at least one member");
            target.f_copy_(&(sum / n))?;
        }
        Ok(())
    })?;
    Ok(out)
}

//! [`Learner`]: what a training loop needs from a learning algorithm (one step on a batch,
//! the parameters, the optimiser state for checkpoints), and [`Trainable`], the state every
//! learner here shares (the net's parameters and their Adam optimiser).

use fewshot_model::{ConvNetConfig, ParamMap, ParamVars};

use crate::meta_params::MetaParams;

use crate::adam::Adam;
use crate::batch::TaskBatch;
use crate::error::{Error, Result};

/// Query loss and accuracy of one training batch, averaged over tasks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Mean query cross-entropy (after adaptation, for meta-learners).
    pub loss: f32,
    /// Mean query accuracy (after adaptation, for meta-learners).
    pub accuracy: f32,
}

/// A learning algorithm over the net's parameters: [`crate::Maml`] (meta-learning) and
/// [`crate::Supervised`] (the baselines' pre-training). A training loop calls
/// [`Learner::step`] once per batch and saves [`Learner::params`] and the optimiser's state.
///
/// A learner implements [`Learner::step`] and gives access to the [`Trainable`] state it
/// updates; the rest is provided.
pub trait Learner {
    /// One update from `batch`; returns the batch's loss and accuracy before the update.
    fn step(&mut self, batch: &TaskBatch) -> Result<StepStats>;
    /// The parameters and optimiser this learner trains.
    fn state(&self) -> &Trainable;
    /// The same, mutably.
    fn state_mut(&mut self) -> &mut Trainable;

    /// The net's shape.
    fn config(&self) -> &ConvNetConfig {
        self.state().config()
    }
    /// A snapshot of the current parameters.
    fn params(&self) -> MetaParams {
        self.state().params()
    }
    /// Replace the parameters' values (e.g. from a checkpoint); groups, names and shapes must
    /// match.
    fn set_params(&mut self, params: &MetaParams) -> Result<()> {
        self.state_mut().set_params(params)
    }
    /// The optimiser (its moments and step count go into checkpoints).
    fn optimizer(&self) -> &Adam {
        &self.state().optimizer
    }
    /// The optimiser, to restore its state on resume.
    fn optimizer_mut(&mut self) -> &mut Adam {
        &mut self.state_mut().optimizer
    }
}

/// The net's parameters and their Adam optimiser: the state a [`Learner`] trains.
#[derive(Debug)]
pub struct Trainable {
    config: ConvNetConfig,
    net: ParamVars,
    rates: Option<ParamVars>,
    bn_steps: Option<ParamVars>,
    /// The optimiser (public for checkpoints).
    pub optimizer: Adam,
    outer: Outer,
}

/// The outer optimiser's settings: Adam's learning rate and how it changes over training.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outer {
    /// The learning rate at step 0.
    pub meta_lr: f64,
    /// Its schedule over the steps.
    pub schedule: LrSchedule,
}

impl Outer {
    /// `meta_lr` at every step.
    pub fn constant(meta_lr: f64) -> Outer {
        Outer { meta_lr, schedule: LrSchedule::Constant }
    }

    /// Check the settings; errors name the setting and its range.
    pub fn validate(&self) -> Result<()> {
        let lr = self.meta_lr;
        if !(lr > 0.0 && lr.is_finite()) {
            return Err(Error::InvalidSetting {
                name: "meta_lr",
                value: lr.to_string(),
                expected: "a finite number > 0".into(),
            });
        }
        if let LrSchedule::Cosine { total_steps, min_lr } = self.schedule {
            if total_steps == 0 {
                return Err(Error::InvalidSetting {
                    name: "meta_lr_cosine_steps",
                    value: "0".into(),
                    expected: "at least 1 for a cosine schedule (its length in meta-steps, usually the run's steps)"
                        .into(),
                });
            }
            if !(min_lr >= 0.0 && min_lr <= lr) {
                return Err(Error::InvalidSetting {
                    name: "meta_lr_min",
                    value: min_lr.to_string(),
                    expected: format!("in [0, meta_lr = {lr}]"),
                });
            }
        }
        Ok(())
    }
}

/// The outer learning rate over training.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum LrSchedule {
    /// The same rate at every step.
    #[default]
    Constant,
    /// Cosine annealing (Loshchilov & Hutter, without restarts): from the base rate at step 0
    /// to `min_lr` at `total_steps`, `min + (base - min) (1 + cos(pi t / T)) / 2`, and
    /// `min_lr` after.
    Cosine {
        /// `T`.
        total_steps: u64,
        /// The rate it ends at.
        min_lr: f64,
    },
}

impl LrSchedule {
    /// The rate at step `step` (0-based) from `base`.
    pub fn lr(&self, base: f64, step: u64) -> f64 {
        match *self {
            LrSchedule::Constant => base,
            LrSchedule::Cosine { total_steps, min_lr } => {
                let t = (step as f64 / total_steps.max(1) as f64).min(1.0);
                min_lr + (base - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

impl Trainable {
    /// Start from `params` (see [`fewshot_model::init`], [`crate::init_rates`],
    /// [`crate::init_bn_steps`]) with Adam as `outer` says.
    pub fn new(config: ConvNetConfig, params: &MetaParams, outer: Outer) -> Result<Trainable> {
        config.validate()?;
        params.check(&config)?;
        outer.validate()?;
        let vars = |m: &Option<ParamMap>| m.as_ref().map(ParamVars::new).transpose();
        Ok(Trainable {
            config,
            net: ParamVars::new(&params.net)?,
            rates: vars(&params.rates)?,
            bn_steps: vars(&params.bn_steps)?,
            optimizer: Adam::new(outer.meta_lr),
            outer,
        })
    }

    /// The net's shape.
    pub fn config(&self) -> &ConvNetConfig {
        &self.config
    }

    /// A snapshot of the current parameters.
    pub fn params(&self) -> MetaParams {
        MetaParams {
            net: self.net.snapshot(),
            rates: self.rates.as_ref().map(ParamVars::snapshot),
            bn_steps: self.bn_steps.as_ref().map(ParamVars::snapshot),
        }
    }

    /// Replace the parameters' values; groups, names and shapes must match (learned inner
    /// rates and per-step batch-norm sets exactly when the learner has them).
    pub fn set_params(&mut self, params: &MetaParams) -> Result<()> {
        params.check(&self.config)?;
        let groups = [
            ("learned inner rates", self.rates.as_ref(), params.rates.as_ref()),
            ("per-step batch-norm sets", self.bn_steps.as_ref(), params.bn_steps.as_ref()),
        ];
        for (what, have, given) in groups {
            match (have, given) {
                (Some(vars), Some(values)) => vars.set(values)?,
                (None, None) => {}
                (have, _) => {
                    let (has, gets) = if have.is_some() { ("has", "none") } else { ("has none", "some") };
                    return Err(Error::Model(fewshot_model::Error::Params(format!(
                        "this learner {has} {what}, and the parameters given have {gets}"
                    ))));
                }
            }
        }
        Ok(self.net.set(&params.net)?)
    }

    /// One Adam step along `grads`, at the schedule's rate for this step.
    pub fn update(&mut self, grads: &MetaParams) -> Result<()> {
        self.optimizer.lr = self.outer.schedule.lr(self.outer.meta_lr, self.optimizer.step);
        let empty = ParamMap::new();
        let mut groups = vec![("", &self.net, &grads.net)];
        if let Some(vars) = &self.rates {
            groups.push((crate::rates::RATE_PREFIX, vars, grads.rates.as_ref().unwrap_or(&empty)));
        }
        if let Some(vars) = &self.bn_steps {
            groups.push((crate::bn_steps::BN_STEP_PREFIX, vars, grads.bn_steps.as_ref().unwrap_or(&empty)));
        }
        self.optimizer.step(&groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_schedule_runs_from_base_to_min() {
        let s = LrSchedule::Cosine { total_steps: 100, min_lr: 1e-5 };
        let close = |a: f64, b: f64| (a - b).abs() < 1e-15;
        assert!(close(s.lr(1e-3, 0), 1e-3));
        assert!(close(s.lr(1e-3, 50), (1e-3 + 1e-5) / 2.0));
        assert!(close(s.lr(1e-3, 100), 1e-5));
        assert!(close(s.lr(1e-3, 1000), 1e-5), "constant after the schedule ends");
        // cos(pi/4): a quarter of the way.
        let quarter = 1e-5 + (1e-3 - 1e-5) * 0.5 * (1.0 + std::f64::consts::FRAC_1_SQRT_2);
        assert!(close(s.lr(1e-3, 25), quarter));
        assert_eq!(LrSchedule::Constant.lr(1e-3, 77), 1e-3);
    }
}

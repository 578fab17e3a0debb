//! [`Maml`]: the meta-learner of MAML and first-order MAML (initial parameters, their Adam
//! optimiser and the inner loop), a [`Learner`] whose step is the meta-gradient of a batch
//! followed by an Adam update, built complete from its [`MamlSettings`]; [`Annealing`]:
//! MAML++'s options that change with the step.

use fewshot_model::ConvNetConfig;

use crate::batch::TaskBatch;
use crate::engine::Engine;
use crate::error::Result;
use crate::head::HeadInit;
use crate::learner::{Learner, Outer, StepStats, Trainable};
use crate::meta_params::MetaParams;
use crate::settings::{InnerLoop, MultiStepLoss, Order};

/// A meta-learner: the net's initial parameters, their Adam state, and the inner loop.
#[derive(Debug)]
pub struct Maml {
    state: Trainable,
    settings: MamlSettings,
}

/// Everything a [`Maml`] is made of besides its net and initial parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MamlSettings {
    /// The inner loop of [`Learner::step`] (once [`MamlSettings::annealing`] is done).
    pub inner: InnerLoop,
    /// The outer optimiser's rate and its schedule.
    pub outer: Outer,
    /// MAML++'s settings that change with the meta-step; default: none.
    pub annealing: Annealing,
    /// How the head starts each task; default learned.
    pub head_init: HeadInit,
    /// Which implementation computes meta-gradients; default [`Engine::Native`].
    pub engine: Engine,
}

impl MamlSettings {
    /// MAML with `inner`, Adam at a constant `meta_lr`, and the defaults of the rest.
    pub fn new(inner: InnerLoop, meta_lr: f64) -> MamlSettings {
        MamlSettings {
            inner,
            outer: Outer::constant(meta_lr),
            annealing: Annealing::default(),
            head_init: HeadInit::default(),
            engine: Engine::default(),
        }
    }

    /// Check the settings; errors name the setting and its range.
    pub fn validate(&self) -> Result<()> {
        self.outer.validate()?;
        self.inner.validate()
    }
}

/// MAML++'s annealed inner-loop options (Antoniou et al. 2019), as functions of the meta-step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Annealing {
    /// Derivative-order annealing: the first this many meta-steps are first order, the rest
    /// take [`InnerLoop::order`].
    pub first_order_steps: u64,
    /// Multi-step loss ([`crate::MultiStepLoss`]), its weights annealed toward the last step
    /// over this many meta-steps; `None`: off (the last step's query loss only).
    pub multi_step_steps: Option<u64>,
}

impl Annealing {
    /// The inner loop of meta-step `step` (0-based), from the configured `inner`.
    pub fn inner_loop(&self, inner: &InnerLoop, step: u64) -> InnerLoop {
        let order = if step < self.first_order_steps { Order::First } else { inner.order };
        let multi_step = self
            .multi_step_steps
            .map(|n| MultiStepLoss { progress: if n == 0 { 1.0 } else { (step as f64 / n as f64).min(1.0) } });
        InnerLoop { order, multi_step, ..*inner }
    }
}

impl Maml {
    /// Start from `params` (see [`fewshot_model::init`]) with `settings`. A `Shared` head also
    /// ties the stored head now (every row and bias entry becomes row 0's), so that it starts
    /// consistent.
    pub fn new(config: ConvNetConfig, params: &MetaParams, settings: MamlSettings) -> Result<Maml> {
        settings.validate()?;
        let mut state = Trainable::new(config, params, settings.outer)?;
        if settings.head_init == HeadInit::Shared {
            let mut tied = state.params();
            tied.net = settings.head_init.task_params(&tied.net, config.n_way)?;
            state.set_params(&tied)?;
        }
        Ok(Maml { state, settings })
    }

    /// What this learner was built with.
    pub fn settings(&self) -> &MamlSettings {
        &self.settings
    }

    /// The inner loop the next meta-step uses (see [`Annealing`]).
    pub fn current_inner_loop(&self) -> InnerLoop {
        self.settings.annealing.inner_loop(&self.settings.inner, self.state.optimizer.step)
    }

    /// The meta-gradient of one batch without updating anything.
    pub fn meta_gradient(&self, batch: &TaskBatch) -> Result<(MetaParams, StepStats)> {
        let inner = self.current_inner_loop();
        let inner = InnerLoop { prototypes: self.settings.head_init == HeadInit::Prototypes, ..inner };
        let config = self.state.config();
        let MamlSettings { head_init, engine, .. } = self.settings;
        let mut params = self.state.params();
        params.net = head_init.task_params(&params.net, config.n_way)?;
        let (mut grads, stats) = engine.meta_gradient(config, &params, batch, &inner)?;
        head_init.tie_gradients(&mut grads.net)?;
        Ok((grads, stats))
    }

    /// One meta-step: meta-gradient of the batch's mean query loss, then an Adam update.
    pub fn meta_step(&mut self, batch: &TaskBatch) -> Result<StepStats> {
        let (grads, stats) = self.meta_gradient(batch)?;
        self.state.update(&grads)?;
        Ok(stats)
    }
}

impl Learner for Maml {
    fn state(&self) -> &Trainable {
        &self.state
    }

    fn state_mut(&mut self) -> &mut Trainable {
        &mut self.state
    }

    fn step(&mut self, batch: &TaskBatch) -> Result<StepStats> {
        self.meta_step(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annealing_switches_order_and_anneals_the_multi_step_loss() {
        let inner = InnerLoop::new(0.4, 5, Order::Second);
        let annealing = Annealing { first_order_steps: 10, multi_step_steps: Some(100) };
        let at = |step| annealing.inner_loop(&inner, step);
        assert_eq!(at(0).order, Order::First);
        assert_eq!(at(9).order, Order::First);
        assert_eq!(at(10).order, Order::Second);
        assert_eq!(at(0).multi_step, Some(MultiStepLoss { progress: 0.0 }));
        assert_eq!(at(50).multi_step, Some(MultiStepLoss { progress: 0.5 }));
        assert_eq!(at(500).multi_step, Some(MultiStepLoss { progress: 1.0 }));
        // Off by default: the configured inner loop, unchanged.
        assert_eq!(Annealing::default().inner_loop(&inner, 0), inner);
        // First order stays first order.
        let fo = InnerLoop::new(0.4, 5, Order::First);
        assert_eq!(annealing.inner_loop(&fo, 20).order, Order::First);
    }
}

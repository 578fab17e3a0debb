//! The settings of adaptation to a task: [`InnerLoop`] (how MAML adapts while it trains, with
//! its [`Order`]) and [`Adaptation`] (how a model adapts before it labels a query set, with its
//! [`Scope`]).

use crate::error::{Error, Result};

/// How the meta-gradient treats the inner loop's gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// First-order MAML: inner gradients are constants (detached).
    First,
    /// Exact MAML: differentiate through the inner gradients (Hessian-vector terms included),
    /// like PyTorch's `autograd.grad(create_graph=True)`.
    #[default]
    Second,
}

/// Inner-loop settings of meta-training.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InnerLoop {
    /// SGD step size on the support loss.
    pub inner_lr: f64,
    /// Number of SGD steps (0: the meta-gradient is the plain gradient of the query loss).
    pub steps: usize,
    /// First or second order.
    pub order: Order,
    /// MAML++'s multi-step loss: the meta-objective weighs the query loss after every inner
    /// step ([`MultiStepLoss::weights`]); `None`: the query loss after the last step only.
    pub multi_step: Option<MultiStepLoss>,
    /// Proto-MAML: each task's head starts from the prototypes of its support set (row `2
    /// c_k`, bias `-|c_k|^2`, `c_k` the mean features of class `k`'s support images), and the
    /// meta-gradient goes through them (see [`crate::HeadInit::Prototypes`]).
    pub prototypes: bool,
}

impl InnerLoop {
    /// `steps` steps of `inner_lr`, of the given order, the last step's query loss only.
    pub fn new(inner_lr: f64, steps: usize, order: Order) -> InnerLoop {
        InnerLoop { inner_lr, steps, order, multi_step: None, prototypes: false }
    }

    /// Check the settings; errors name the setting and its range.
    pub fn validate(&self) -> Result<()> {
        check_lr(self.inner_lr)?;
        if let Some(m) = self.multi_step
            && !(0.0..=1.0).contains(&m.progress)
        {
            return Err(Error::InvalidSetting {
                name: "multi_step.progress",
                value: m.progress.to_string(),
                expected: "a number in [0, 1]".into(),
            });
        }
        Ok(())
    }

    /// The weight of the query loss after each inner step `1..=steps` in the meta-objective.
    pub fn step_weights(&self) -> Vec<f64> {
        match self.multi_step {
            Some(m) => m.weights(self.steps),
            None => (1..=self.steps).map(|i| if i == self.steps { 1.0 } else { 0.0 }).collect(),
        }
    }
}

/// MAML++'s multi-step loss (Antoniou et al. 2019, section 4): the query loss after every
/// inner step enters the meta-objective, with weights that start uniform and anneal toward
/// the last step as training goes on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MultiStepLoss {
    /// How far the annealing has gone: 0 (uniform weights) to 1 (annealed).
    pub progress: f64,
}

impl MultiStepLoss {
    /// The weights of steps `1..=steps`, as the MAML++ code computes them: each non-final
    /// weight falls linearly from `1/k` to a floor of `0.03/k`; the last one rises from `1/k`
    /// to `1 - (k - 1) 0.03/k`. They sum to 1 at every progress.
    pub fn weights(&self, steps: usize) -> Vec<f64> {
        if steps == 0 {
            return Vec::new();
        }
        let k = steps as f64;
        let floor = 0.03 / k;
        let p = self.progress.clamp(0.0, 1.0);
        let mut w: Vec<f64> = (1..steps).map(|_| (1.0 / k - p / k).max(floor)).collect();
        w.push((1.0 / k + p * (k - 1.0) / k).min(1.0 - (k - 1.0) * floor));
        w
    }
}

fn check_lr(inner_lr: f64) -> Result<()> {
    if !(inner_lr > 0.0 && inner_lr.is_finite()) {
        return Err(Error::InvalidSetting {
            name: "inner_lr",
            value: inner_lr.to_string(),
            expected: "a finite number > 0".into(),
        });
    }
    Ok(())
}

/// Which parameters adaptation to a task updates (in a config: `all`, `head`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every parameter (MAML).
    #[default]
    All,
    /// The linear head only, the feature extractor frozen (a transfer baseline's fine-tuning).
    Head,
}

impl Scope {
    /// Whether adaptation updates the parameter named `name`.
    pub fn updates(self, name: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Head => name.starts_with("head."),
        }
    }
}

/// How a model adapts to a task's support set before it labels the query set: `steps` SGD
/// steps of `inner_lr` on the support loss, of the parameters in `scope`. Always first order
/// (the same fast weights as exact MAML; no graph is kept, since nothing differentiates them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adaptation {
    /// SGD step size.
    pub inner_lr: f64,
    /// Number of SGD steps (0: no adaptation).
    pub steps: usize,
    /// Which parameters move.
    pub scope: Scope,
    /// The head starts from the prototypes of the support set (see [`InnerLoop::prototypes`]).
    pub prototypes: bool,
}

impl Adaptation {
    /// `steps` steps of `inner_lr` on every parameter, as MAML adapts.
    pub fn all(inner_lr: f64, steps: usize) -> Adaptation {
        Adaptation { inner_lr, steps, scope: Scope::All, prototypes: false }
    }

    /// Check the settings; errors name the setting and its range.
    pub fn validate(&self) -> Result<()> {
        check_lr(self.inner_lr)
    }

    /// The inner loop that computes the same fast weights, when every parameter moves.
    pub(crate) fn inner_loop(&self) -> InnerLoop {
        InnerLoop { prototypes: self.prototypes, ..InnerLoop::new(self.inner_lr, self.steps, Order::First) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(steps: usize, progress: f64, expected: &[f64]) {
        let w = MultiStepLoss { progress }.weights(steps);
        assert_eq!(w.len(), expected.len());
        for (a, b) in w.iter().zip(expected) {
            assert!((a - b).abs() < 1e-12, "{w:?} vs {expected:?}");
        }
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12, "weights sum to 1: {w:?}");
    }

    #[test]
    fn multi_step_weights_anneal_toward_the_last_step() {
        check(1, 0.0, &[1.0]);
        check(1, 1.0, &[1.0]);
        check(5, 0.0, &[0.2; 5]);
        // Half way: non-final 0.2 - 0.5/5 = 0.1, final 0.2 + 0.5 * 4/5 = 0.6.
        check(5, 0.5, &[0.1, 0.1, 0.1, 0.1, 0.6]);
        // Annealed: non-final at the floor 0.03/5, final 1 - 4 * 0.006.
        check(5, 1.0, &[0.006, 0.006, 0.006, 0.006, 0.976]);
    }

    #[test]
    fn without_multi_step_only_the_last_step_counts() {
        assert_eq!(InnerLoop::new(0.4, 3, Order::Second).step_weights(), vec![0.0, 0.0, 1.0]);
    }
}
